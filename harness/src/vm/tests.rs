//! Tests against a real QEMU and guest: `#[ignore]`d, run by
//! `cargo xtask test`, which builds the kernel and the image they boot
//! (`crate::testing::guest`). The others need nothing but Rust.
//!
//! VM tests run one at a time (a lock), as they would fight over the CPUs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::testing::Guest;

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn config(inp: &Guest, label: &str) -> VmConfig {
    let mut cfg = VmConfig::new(
        inp.kernel.clone(),
        inp.initramfs.clone(),
        crate::cache::new_run_dir(label).unwrap(),
    );
    cfg.ssh = Some(SshConfig {
        private_key: inp.ssh_key.clone(),
        user: "root".into(),
    });
    cfg.boot_timeout = Duration::from_secs(30);
    cfg
}

/// Runs `f` with the guest `cargo xtask test` built, on its own runtime,
/// one VM test at a time.
fn vm_test<F: std::future::Future<Output = ()>>(f: impl FnOnce(Guest) -> F) {
    let inp = crate::testing::guest();
    eprintln!("guest: {} ({})", inp.variant, inp.kernel.display());
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f(inp));
}

/// No process with this pid, nor any in its process group.
fn gone(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) != 0 && libc::killpg(pid, 0) != 0 }
}

#[test]
#[ignore = "needs a booted guest: run by cargo xtask test"]
fn boots_to_ssh_and_everything_works() {
    vm_test(|inp| async move {
        let mut cfg = config(&inp, "vm-everything");
        cfg.devices = vec![
            Device::Edu {
                id: "edu0".into(),
                dma_mask: Some(u64::MAX),
            },
            Device::EduPairBehindBridge {
                bridge_id: "br0".into(),
                ids: ["edua".into(), "edub".into()],
                dma_mask: None,
            },
            Device::E1000e { id: "nic1".into() },
            Device::EduPairMultifunction {
                ids: ["eduf0".into(), "eduf1".into()],
                dma_mask: None,
            },
        ];
        cfg.hotplug_ports = 1;
        cfg.trace_events = vec![
            "smmuv3_translate_*".into(),
            "smmuv3_record_event".into(),
            "gicv3_its_translation_write".into(),
            "gicv3_its_cmd_mapd".into(),
        ];
        let vm = Vm::boot(cfg).await.expect("boot");
        eprintln!("boot phases:\n{}", vm.boot_timings());
        eprintln!("ssh: {}", vm.ssh_command_line().unwrap());
        let pid = vm.pid();

        // Layout: every placed device is where the plan said.
        for d in vm.devices() {
            let out = vm
                .exec_ok(
                    &format!(
                        "cat /sys/bus/pci/devices/{}/vendor",
                        sh_quote(&d.bdf.to_string())
                    ),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|e| panic!("{} at {}: {e:#}", d.id, d.bdf));
            assert!(out.stdout_str().starts_with("0x"), "{}", d.id);
            if let Some(bus) = d.secondary_bus {
                let sec = vm
                    .exec_ok(
                        &format!("cat /sys/bus/pci/devices/{}/secondary_bus_number", d.bdf),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    sec.stdout_str().trim(),
                    bus.to_string(),
                    "bus behind {}",
                    d.id
                );
            }
        }
        // The multifunction pair shares an iommu group, edu0 does not; behind
        // the bridge only the first edu gets one (aliased stream id).
        let group = |id: &str| {
            let bdf = vm.device(id).unwrap().bdf;
            format!("readlink /sys/bus/pci/devices/{bdf}/iommu_group || echo none")
        };
        let mut groups = std::collections::HashMap::new();
        for id in ["edu0", "eduf0", "eduf1", "edua", "edub"] {
            let out = vm
                .exec_ok(&group(id), Duration::from_secs(5))
                .await
                .unwrap()
                .stdout_str();
            groups.insert(id, out.trim().rsplit('/').next().unwrap().to_string());
        }
        eprintln!("iommu groups: {groups:?}");
        assert_eq!(groups["eduf0"], groups["eduf1"]);
        assert_ne!(groups["eduf0"], groups["edu0"]);
        assert_ne!(groups["edua"], "none");
        assert_eq!(groups["edub"], "none");

        // stdout, stderr and status, and 2 MB of output without deadlock.
        let out = vm
            .exec("echo out; echo err >&2; exit 7", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (
                out.stdout_str().as_str(),
                out.stderr_str().as_str(),
                out.status
            ),
            ("out\n", "err\n", 7)
        );
        let t = Instant::now();
        let big = vm
            .exec(
                "head -c 2097152 /dev/zero | tr '\\0' x; head -c 1048576 /dev/zero >&2",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!((big.stdout.len(), big.stderr.len()), (2 << 20, 1 << 20));
        eprintln!("3 MB of output in {:.2} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        vm.exec_ok("true", Duration::from_secs(5)).await.unwrap();
        eprintln!(
            "one command on the open connection: {:.3} s",
            t.elapsed().as_secs_f64()
        );

        // Upload.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        vm.upload(
            data.clone(),
            "/tmp/it's here",
            0o755,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        let sum = vm
            .exec_ok(
                "md5sum < \"/tmp/it's here\"; stat -c %a \"/tmp/it's here\"",
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(sum.stdout_str().ends_with("755\n"), "{}", sum.stdout_str());

        // A long-lived line session (a shell loop stands in for the agent).
        let mut s = vm
            .open_session("while read -r l; do echo \"echo:$l\"; done")
            .await
            .unwrap();
        let t = Instant::now();
        for i in 0..20 {
            let r = s
                .request_line(&format!("{{\"n\":{i}}}"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(r, format!("echo:{{\"n\":{i}}}"));
        }
        eprintln!("20 session round trips: {:.3} s", t.elapsed().as_secs_f64());
        drop(s);
        let mut s = vm
            .open_session("read x; echo bye >&2; exit 3")
            .await
            .unwrap();
        let e = s
            .request_line("hi", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("exited"), "{e:#}");

        // QMP.
        let status = vm.qmp_execute(&qapi::qmp::query_status {}).await.unwrap();
        assert!(status.running);
        let pci = vm
            .qmp()
            .execute_raw("query-pci", serde_json::Value::Null)
            .await
            .unwrap();
        let ids: Vec<String> = pci[0]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["qdev_id"].as_str().unwrap_or("").to_string())
            .collect();
        assert!(ids.contains(&"edu0".to_string()), "{ids:?}");

        // Traces: the NIC's MSI-X writes go through the SMMU to the ITS.
        let nic = vm.device("net0").unwrap().requester_id;
        let mut cur = vm.trace_cursor();
        vm.exec_ok("true", Duration::from_secs(5)).await.unwrap();
        let evs = vm.traces_since(&mut cur, Some(nic)).unwrap();
        assert!(
            evs.iter()
                .any(|e| matches!(e.kind, TraceKind::ItsTranslationWrite { .. })),
            "{evs:?}"
        );
        assert!(evs.iter().all(|e| e.requester_id() == Some(u32::from(nic))));

        // An edu MSI aimed at the doorbell's physical address, which its DMA
        // domain does not map: the SMMU faults it and records the event.
        let tool = build_mmio_tool();
        vm.upload(tool, "/tmp/mmio-write", 0o755, Duration::from_secs(10))
            .await
            .unwrap();
        let edu0 = vm.device("edu0").unwrap().clone();
        let mut cur = vm.trace_cursor();
        let out = vm
            .exec(
                &edu_msi_script(&edu0.bdf.to_string()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(out.success(), "{}{}", out.stdout_str(), out.stderr_str());
        let evs = vm.traces_since(&mut cur, Some(edu0.requester_id)).unwrap();
        eprintln!("edu0 events: {evs:#?}");
        assert!(
            evs.iter().any(|e| matches!(
                e.kind,
                TraceKind::SmmuFault {
                    iova: 0x8090040,
                    ..
                }
            )),
            "{evs:?}"
        );
        assert!(
            evs.iter()
                .any(|e| matches!(e.kind, TraceKind::SmmuRecordEvent { .. })),
            "{evs:?}"
        );

        // Hotplug into the spare root port (the guest has no pciehp: rescan).
        let placed = vm
            .hotplug(
                &Device::Edu {
                    id: "hot0".into(),
                    dma_mask: None,
                },
                0,
            )
            .await
            .unwrap();
        // `hotplug` powered the slot on (the guest has no pciehp).
        vm.exec_ok("echo 1 > /sys/bus/pci/rescan", Duration::from_secs(10))
            .await
            .unwrap();
        vm.exec_ok(
            &format!("test -e /sys/bus/pci/devices/{}", placed.bdf),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        // And out again: DEVICE_DELETED comes, and the guest no longer has it.
        vm.unplug("hot0", 0, &placed.bdf.to_string(), Duration::from_secs(20))
            .await
            .unwrap();
        vm.exec_ok(
            &format!("test ! -e /sys/bus/pci/devices/{}", placed.bdf),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

        vm.shutdown().await.unwrap();
        assert!(gone(pid), "qemu {pid} outlived shutdown");
    });
}

/// Shell for the guest: enable memory + bus master, aim edu's MSI at the
/// ITS doorbell's physical address, enable MSI, ring the edu's "raise
/// interrupt" register.
fn edu_msi_script(bdf: &str) -> String {
    format!(
        "{}cfgw 4 2 6\ncap=$(findcap 5)\ncfgw $((cap+4)) 4 $((0x08090040))\ncfgw $((cap+8)) 4 0\ncfgw $((cap+12)) 2 0\nctl=$(cfgr $((cap+2)) 2)\ncfgw $((cap+2)) 2 $((ctl | 1))\n/tmp/mmio-write $d/resource0 0x60 1\n",
        super::ops::cfg_helpers(bdf)
    )
}

/// A 32-bit MMIO write through a sysfs `resourceN` file: the guest kernel
/// has no /dev/mem, and busybox has no mmap tool. Freestanding (raw
/// syscalls), so only the cross compiler is needed.
const MMIO_WRITE_C: &str = r#"
__asm__(".global _start\n_start:\n mov x0, sp\n bl cmain\n");
static long sc(long n, long a, long b, long c, long d, long e, long f) {
    register long x8 __asm__("x8") = n; register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b; register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d; register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
    return x0;
}
static unsigned long num(const char *s) {
    unsigned long v = 0;
    if (s[0] == '0' && s[1] == 'x') s += 2;
    for (; *s; s++) v = v * 16 + (*s <= '9' ? *s - '0' : (*s | 32) - 'a' + 10);
    return v;
}
void cmain(long *sp) {
    char **argv = (char **)(sp + 1);
    if (sp[0] != 4) sc(93, 2, 0, 0, 0, 0, 0);
    long fd = sc(56, -100, (long)argv[1], 2, 0, 0, 0);
    if (fd < 0) sc(93, 3, 0, 0, 0, 0, 0);
    long p = sc(222, 0, 4096, 3, 1, fd, 0);
    if (p < 0 && p > -4096) sc(93, 4, 0, 0, 0, 0, 0);
    *(volatile unsigned int *)(p + num(argv[2])) = (unsigned int)num(argv[3]);
    sc(93, 0, 0, 0, 0, 0, 0);
}
"#;

fn build_mmio_tool() -> Vec<u8> {
    crate::testing::program("aarch64-linux-gnu-gcc");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("mmio.c");
    std::fs::write(&src, MMIO_WRITE_C).unwrap();
    let out = dir.path().join("mmio-write");
    let st = std::process::Command::new("aarch64-linux-gnu-gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-O2",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "aarch64-linux-gnu-gcc failed on the mmio tool"
    );
    std::fs::read(out).unwrap()
}

#[test]
#[ignore = "needs a booted guest: run by cargo xtask test"]
fn a_dropped_vm_leaves_no_qemu_even_when_the_test_panics() {
    vm_test(|inp| async move {
        // What is dropped is QEMU's process group: a guest paused before its
        // first instruction has one as much as a booted one, and costs no
        // boot (the suite's CPU is its time).
        let paused = |label: &str| {
            let mut cfg = config(&inp, label);
            cfg.start_paused = true;
            cfg
        };
        let vm = Vm::boot(paused("vm-drop")).await.expect("boot");
        let pid = vm.pid();
        assert!(!gone(pid));
        drop(vm);
        assert!(gone(pid), "qemu {pid} outlived its handle");

        // A panicking task that owns a VM: unwinding drops the handle.
        let cfg = paused("vm-panic");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let vm = Vm::boot(cfg).await.expect("boot");
            tx.send(vm.pid()).unwrap();
            panic!("a failing test holding a vm");
        });
        let pid = rx.await.unwrap();
        assert!(task.await.unwrap_err().is_panic());
        assert!(gone(pid), "qemu {pid} outlived a panicking test");
    });
}

#[test]
#[ignore = "needs a booted guest: run by cargo xtask test"]
fn killing_qemu_mid_command_is_an_infrastructure_error_within_5s() {
    vm_test(|inp| async move {
        let vm = Vm::boot(config(&inp, "vm-kill")).await.expect("boot");
        let pid = vm.pid();
        let mut session = vm.open_session("cat").await.unwrap();
        let killer = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Instant::now()
        };
        let (exec, killed_at) = tokio::join!(vm.exec("sleep 60", Duration::from_secs(60)), killer);
        let err = exec.unwrap_err();
        let waited = killed_at.elapsed();
        eprintln!(
            "reported {:.2} s after the kill: {err:#}",
            waited.as_secs_f64()
        );
        assert!(waited < Duration::from_secs(5));
        assert_eq!(
            crate::outcome::exit_code_of(&err),
            crate::ExitCode::Infrastructure
        );
        assert!(format!("{err:#}").contains("qemu exited"), "{err:#}");
        // Later operations fail at once too.
        let t = Instant::now();
        assert!(session
            .request_line("x", Duration::from_secs(30))
            .await
            .is_err());
        assert!(vm.exec("true", Duration::from_secs(30)).await.is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    });
}

#[test]
#[ignore = "needs a booted guest: run by cargo xtask test"]
fn a_guest_panic_is_a_finding_with_the_panic_text() {
    vm_test(|inp| async move {
        let vm = Vm::boot(config(&inp, "vm-panic")).await.expect("boot");
        let t = Instant::now();
        let err = vm
            .exec(
                "echo c > /proc/sysrq-trigger; sleep 30",
                Duration::from_secs(60),
            )
            .await
            .unwrap_err();
        eprintln!("reported after {:.2} s: {err:#}", t.elapsed().as_secs_f64());
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(crate::outcome::exit_code_of(&err), crate::ExitCode::Finding);
        let text = format!("{err:#}");
        assert!(text.contains("sysrq triggered crash"), "{text}");
        assert!(text.contains("Call trace"), "{text}");
    });
}

#[test]
#[ignore = "needs QEMU and a built kernel and image: run by cargo xtask test"]
fn qemu_failing_at_startup_is_reported_at_once_with_its_stderr() {
    vm_test(|inp| async move {
        let mut cfg = config(&inp, "vm-early-exit");
        // More RAM than TCG's 32-bit-safe virt can hold without highmem: QEMU refuses at once.
        cfg.memory_mb = 16 * 1024 * 1024;
        cfg.boot_timeout = Duration::from_secs(60);
        let t = Instant::now();
        let err = Vm::boot(cfg).await.err().expect("boot must fail");
        eprintln!("reported after {:.2} s: {err:#}", t.elapsed().as_secs_f64());
        assert!(t.elapsed() < Duration::from_secs(5));
        let text = format!("{err:#}");
        assert!(
            text.contains("qemu exited") && text.contains("--- qemu stderr ---"),
            "{text}"
        );
    });
}

#[test]
fn handles_can_cross_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Vm>();
    send::<Session>();
}

/// Prints the boot phases of five boots and their median; the target is
/// ready over SSH within 3 s of QEMU's start on a 2-core host. Not asserted:
/// a loaded CI machine would make it flaky; `cargo xtask boot` shows it.
#[test]
#[ignore = "needs QEMU and a built kernel and image: run by cargo xtask test"]
fn preflight_starts_each_machine_once_and_reports_a_qemu_that_cannot_start() {
    vm_test(|inp| async move {
        let good = config(&inp, "vm-preflight-good");
        let same = config(&inp, "vm-preflight-same");
        let n = preflight(vec![good, same])
            .await
            .expect("preflight of a good config");
        assert_eq!(n, 1, "two identical machines are one start");

        // QEMU refuses this at start, before any guest code: the pre-flight
        // error carries QEMU's own words and is infrastructure (exit 2).
        let mut bad = config(&inp, "vm-preflight-bad");
        bad.smp = 1000;
        let err = preflight(vec![bad]).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("pre-flight"), "{text}");
        assert!(text.contains("qemu-system-aarch64:"), "{text}");
        assert_eq!(
            crate::outcome::exit_code_of(&err),
            crate::ExitCode::Infrastructure,
            "{text}"
        );
    });
}
