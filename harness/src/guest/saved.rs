//! Starting the harness's guest from a saved machine instead of booting it.
//!
//! A TCG boot is most of a short scenario's time. So each distinct machine
//! (kernel, initramfs, QEMU binary and the whole planned command line:
//! machine, SMMU, devices and their slots, memory, kernel command line) is
//! booted once to ready, logged into once (dropbear makes its host key at
//! the first login), saved with QEMU migration (`mapped-ram`: pages at
//! fixed offsets of a sparse file, loaded in place) to a file in the cache
//! (`saved/<key>/state`), and every later start loads that file with
//! `-incoming` ([`start`]). The key holds everything the guest was made
//! from, so a changed kernel or device list is a new machine.
//!
//! What migration does not carry is put back by the guest itself: QEMU's
//! `edu` has no migration state, so a restored `edu` is as at reset: no
//! BARs, decoding off. Before saving, the config space of every PCI function
//! is copied to `/run` in the guest ([`SAVE_PCI_CONFIG`]); after a restore,
//! the copies of the devices that lack migration state are written back
//! through sysfs, so the device is exactly as the booted kernel left it
//! (same BDFs, BARs and requester ids: the placement plan is the same).
//!
//! Cold boot stays what a restored start is checked against: every
//! scenario's snapshot is the same either way (`cargo xtask test
//! --cold-boot` runs them cold).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::{self, ContentKey, KeyBuilder};
use crate::vm::{self, qemu::QemuPlan, Incoming, QemuCaps, Vm, VmConfig};

/// How a trial's guest starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartMode {
    /// From the machine's saved state (made by the first start that needs it).
    #[default]
    Saved,
    /// A full boot, every time (`--cold-boot`).
    Cold,
}

impl StartMode {
    /// The name `inputs.json` gives it.
    pub fn name(self) -> &'static str {
        match self {
            StartMode::Saved => "saved",
            StartMode::Cold => "cold",
        }
    }
}

/// Bumped when what a saved machine holds, or how it is made, changes.
const FORMAT: &str = "2";

/// Where the guest keeps its PCI functions' config space for a restore.
const PCI_CONFIG_DIR: &str = "/run/msi-harness/pci-config";

/// Run in the guest before it is saved.
const SAVE_PCI_CONFIG: &str = "mkdir -p /run/msi-harness/pci-config && for d in /sys/bus/pci/devices/*; do cat \"$d/config\" > \"/run/msi-harness/pci-config/${d##*/}\" || exit 1; done";

/// From the start of a save to its file: a boot, a login, the migration.
const SAVE_DEADLINE: Duration = Duration::from_secs(180);

/// How long a start waits for another process saving the same machine.
const LOCK_DEADLINE: Duration = Duration::from_secs(300);

/// QEMU devices that have no migration state: after a restore they are as
/// at reset, and the guest writes their config space back.
fn lacks_migration_state(driver: &str) -> bool {
    driver == "edu"
}

/// What `meta.json` of a saved machine says: for people, and for pruning
/// machines whose kernel or initramfs is gone or was rebuilt.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    /// [`FORMAT`] when saved: another format is pruned.
    #[serde(default)]
    format: String,
    key: String,
    qemu: String,
    kernel: PathBuf,
    initrd: PathBuf,
    /// [`file_identity`] of each when saved.
    #[serde(default)]
    kernel_identity: String,
    #[serde(default)]
    initrd_identity: String,
    command_line: String,
    boot_s: f64,
    save_s: f64,
    bytes: u64,
}

/// A saved machine in the cache.
#[derive(Debug, Clone)]
pub struct SavedMachine {
    pub key: ContentKey,
    pub dir: PathBuf,
}

impl SavedMachine {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.txt")
    }

    /// Whether it has been saved (the state file is published last).
    pub fn exists(&self) -> bool {
        self.dir.join("done").is_file()
    }
}

/// The saved machine `cfg` starts from (whether or not it exists yet).
pub fn saved_machine(
    cfg: &VmConfig,
    caps: &QemuCaps,
    plan: &QemuPlan,
) -> anyhow::Result<SavedMachine> {
    let key = key(cfg, caps, plan)?;
    let dir = cache::cache_dir("saved")?.join(key.short());
    Ok(SavedMachine { key, dir })
}

fn key(cfg: &VmConfig, caps: &QemuCaps, plan: &QemuPlan) -> anyhow::Result<ContentKey> {
    let mut k = KeyBuilder::new();
    k.str("format", FORMAT)
        .str("qemu", &caps.path.to_string_lossy())
        .str("qemu-version", &caps.version_line)
        .str("qemu-file", &file_identity(&caps.path)?)
        .str("kernel-file", &file_identity(&cfg.kernel)?)
        .str("initrd-file", &file_identity(&cfg.initrd)?)
        .str("ssh", &format!("{:?}", cfg.ssh))
        // The planned command line has the machine, memory, CPUs, SMMU,
        // devices with their slots, kernel, initrd and kernel command line.
        .str("plan", &plan.identity());
    Ok(k.finish())
}

/// A file as the key sees it: path, size and modification time (hashing a
/// kernel image at every start would cost more than the start).
fn file_identity(path: &Path) -> anyhow::Result<String> {
    let (size, mtime) = cache::file_stamp(path)?;
    Ok(format!("{} {size} {mtime}", path.display()))
}

/// Why `cfg` cannot start from a saved machine, if it cannot.
pub fn cold_only(cfg: &VmConfig) -> Option<&'static str> {
    if cfg.start_paused {
        Some("it starts paused")
    } else if cfg.ssh.is_none() {
        Some("it has no SSH, which the restore needs to put devices back")
    } else if cfg.incoming.is_some() {
        Some("it already starts from a saved state")
    } else {
        None
    }
}

/// Starts `cfg` from its saved machine, saving it first when there is none.
/// Returns the guest ready for steps, as [`Vm::boot`] does.
pub async fn start(mut cfg: VmConfig) -> anyhow::Result<Vm> {
    let caps = vm::caps_of(&cfg).await?;
    let plan = match vm::qemu::plan(&cfg, &caps) {
        Ok(p) => p,
        // Boot says why, in its own words (a skip or a config error).
        Err(_) => return Vm::boot(cfg).await,
    };
    if cold_only(&cfg).is_some() {
        return Vm::boot(cfg).await;
    }
    let saved = saved_machine(&cfg, &caps, &plan)?;
    if !saved.exists() {
        save(&cfg, &saved).await?;
    }
    let console = fs::read_to_string(saved.console())
        .with_context(|| format!("read {}", saved.console().display()))?;
    cfg.incoming = Some(Incoming {
        state: saved.state(),
        console: console.lines().map(String::from).collect(),
    });
    let vm = Vm::boot(cfg)
        .await
        .with_context(|| format!("start from the saved machine {}", saved.dir.display()))?;
    put_back_devices(&vm);
    Ok(vm)
}

/// Writes back the config space of each device that QEMU did not migrate.
fn put_back_devices(vm: &Vm) {
    let mut script = Vec::new();
    for d in vm.devices() {
        if lacks_migration_state(&d.driver) {
            let bdf = vm::sh_quote(&d.bdf.to_string());
            script.push(format!(
                "cat {PCI_CONFIG_DIR}/{bdf} > /sys/bus/pci/devices/{bdf}/config"
            ));
        }
    }
    if script.is_empty() {
        return;
    }
    // Run as the prefix of the guest's first command (the agent session):
    // a round trip of its own would cost as much again.
    vm.run_first(&script.join(" && "));
}

/// Boots `cfg`, prepares and saves it as `saved`. Another process saving
/// the same machine is waited for; a failed save leaves nothing behind.
async fn save(cfg: &VmConfig, saved: &SavedMachine) -> anyhow::Result<()> {
    let root = saved
        .dir
        .parent()
        .context("saved machine dir has a parent")?
        .to_path_buf();
    let lock_path = root.join(format!("{}.lock", saved.key.short()));
    let lock = tokio::task::spawn_blocking(move || {
        cache::lock_exclusive(
            &lock_path,
            LOCK_DEADLINE,
            Duration::from_millis(50),
            "another start saving this machine",
            &mut || {},
        )
    })
    .await
    .context("lock task")??;
    if saved.exists() {
        return Ok(());
    }
    let tmp = root.join(format!("tmp-{}-{}", saved.key.short(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let r = save_into(cfg, &tmp, saved.key.short()).await;
    if let Err(e) = r {
        // The boot's artifacts say why; keep them next to the cache.
        let failed = root.join(format!("failed-{}", saved.key.short()));
        let _ = fs::remove_dir_all(&failed);
        let _ = fs::rename(&tmp, &failed);
        return Err(e.context(format!(
            "save the machine (artifacts: {})",
            failed.display()
        )));
    }
    fs::write(tmp.join("done"), b"")?;
    let _ = fs::remove_dir_all(&saved.dir);
    fs::rename(&tmp, &saved.dir)
        .with_context(|| format!("move {} to {}", tmp.display(), saved.dir.display()))?;
    drop(lock);
    prune(&root);
    Ok(())
}

/// Removes saved machines that no start can use any more: saved in another
/// format, or their kernel or initramfs is gone or is another file now (a
/// rebuilt tree, a new image).
/// Another key's lock is not taken: a machine being saved has no
/// `meta.json` in its final place yet, and one being loaded is kept open by
/// QEMU, which a removal does not disturb.
fn prune(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(text) = fs::read_to_string(dir.join("meta.json")) else {
            continue;
        };
        let Ok(meta) = serde_json::from_str::<Meta>(&text) else {
            continue;
        };
        let current = |path: &Path, saved: &str| {
            file_identity(path).is_ok_and(|id| saved.is_empty() || id == saved)
        };
        if meta.format != FORMAT
            || !current(&meta.kernel, &meta.kernel_identity)
            || !current(&meta.initrd, &meta.initrd_identity)
        {
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_file(root.join(format!("{}.lock", meta.key)));
        }
    }
}

async fn save_into(cfg: &VmConfig, tmp: &Path, key: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut boot_cfg = cfg.clone();
    boot_cfg.run_dir = tmp.join("boot");
    boot_cfg.boot_timeout = boot_cfg.boot_timeout.min(SAVE_DEADLINE);
    let vm = Vm::boot(boot_cfg).await?;
    let booted = started.elapsed();
    vm.exec_ok(SAVE_PCI_CONFIG, Duration::from_secs(30))
        .await
        .context("copy the PCI config spaces before saving")?;
    let report = vm.save_state(&tmp.join("state"), SAVE_DEADLINE).await?;
    let mut cursor = vm::ConsoleCursor::default();
    let console: Vec<String> = vm
        .console_since(&mut cursor)
        .into_iter()
        .map(|l| l.text)
        .collect();
    fs::write(tmp.join("console.txt"), console.join("\n") + "\n")?;
    let meta = Meta {
        format: FORMAT.to_string(),
        key: key.to_string(),
        qemu: cfg.qemu.display().to_string(),
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        kernel_identity: file_identity(&cfg.kernel)?,
        initrd_identity: file_identity(&cfg.initrd)?,
        command_line: vm.command_line().to_string(),
        boot_s: booted.as_secs_f64(),
        save_s: report.took.as_secs_f64(),
        bytes: report.bytes,
    };
    fs::write(tmp.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    vm.shutdown().await.context("shut down the saved guest")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Device;

    fn caps() -> QemuCaps {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        QemuCaps {
            path: "/q/qemu".into(),
            version: (10, 0, 2),
            version_line: "QEMU emulator version 10.0.2".into(),
            machines: set(&["virt", "virt-9.0"]),
            devices: set(&[
                "edu",
                "pcie-root-port",
                "virtio-net-pci",
                "pcie-pci-bridge",
                "e1000e",
            ]),
            virt_props: set(&["iommu", "gic-version", "its"]),
            trace_events: set(&["smmuv3_translate_success", "smmuv3_record_event"]),
        }
    }

    #[test]
    fn a_saved_machine_is_keyed_by_everything_the_guest_is_made_of() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initrd, qemu) = (
            dir.path().join("Image"),
            dir.path().join("initrd"),
            dir.path().join("qemu"),
        );
        for f in [&kernel, &initrd, &qemu] {
            fs::write(f, b"x").unwrap();
        }
        let mut caps = caps();
        caps.path = qemu.clone();
        let mut cfg = VmConfig::new(kernel.clone(), initrd.clone(), dir.path().join("run"));
        cfg.ssh = Some(vm::SshConfig {
            private_key: "/k/id".into(),
            user: "root".into(),
        });
        cfg.devices = vec![Device::Edu {
            id: "edu0".into(),
            dma_mask: None,
        }];
        let k = |cfg: &VmConfig| {
            let plan = vm::qemu::plan(cfg, &caps).unwrap();
            key(cfg, &caps, &plan).unwrap()
        };
        let base = k(&cfg);
        assert_eq!(base, k(&cfg), "the same guest is the same machine");

        // The run directory and deadlines are not the machine.
        let mut other_run = cfg.clone();
        other_run.run_dir = dir.path().join("elsewhere");
        other_run.boot_timeout = Duration::from_secs(1);
        assert_eq!(base, k(&other_run));

        let mut two = cfg.clone();
        two.devices.push(Device::Edu {
            id: "edu1".into(),
            dma_mask: None,
        });
        assert_ne!(base, k(&two), "another device is another machine");
        let mut mem = cfg.clone();
        mem.memory_mb = 1536;
        assert_ne!(base, k(&mem));
        let mut append = cfg.clone();
        append.append.push_str(" msi.hugepages=8");
        assert_ne!(base, k(&append));
        // A rebuilt kernel at the same path is another machine.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&kernel, b"xy").unwrap();
        assert_ne!(base, k(&cfg));
    }

    #[test]
    fn machines_whose_kernel_is_gone_or_rebuilt_are_pruned() {
        let root = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let (kernel, initrd) = (files.path().join("Image"), files.path().join("initrd"));
        fs::write(&kernel, b"k").unwrap();
        fs::write(&initrd, b"i").unwrap();
        let meta = |key: &str, kernel: &Path| Meta {
            format: FORMAT.into(),
            key: key.into(),
            qemu: "qemu".into(),
            kernel: kernel.to_path_buf(),
            initrd: initrd.clone(),
            kernel_identity: file_identity(kernel).unwrap_or_default(),
            initrd_identity: file_identity(&initrd).unwrap(),
            command_line: String::new(),
            boot_s: 0.0,
            save_s: 0.0,
            bytes: 0,
        };
        let gone = files.path().join("gone");
        fs::write(&gone, b"g").unwrap();
        let rebuilt = files.path().join("rebuilt");
        fs::write(&rebuilt, b"r").unwrap();
        for (key, k) in [
            ("keep", &kernel),
            ("gone", &gone),
            ("rebuilt", &rebuilt),
            ("old-format", &kernel),
        ] {
            let dir = root.path().join(key);
            fs::create_dir(&dir).unwrap();
            let mut m = meta(key, k);
            if key == "old-format" {
                m.format = "0".into();
            }
            fs::write(dir.join("meta.json"), serde_json::to_string(&m).unwrap()).unwrap();
        }
        fs::remove_file(&gone).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&rebuilt, b"rebuilt").unwrap();
        prune(root.path());
        assert!(root.path().join("keep").is_dir());
        assert!(!root.path().join("gone").exists());
        assert!(!root.path().join("rebuilt").exists());
        assert!(!root.path().join("old-format").exists());
    }

    #[test]
    fn only_a_guest_with_ssh_that_boots_running_starts_from_a_saved_machine() {
        let mut cfg = VmConfig::new("/k".into(), "/i".into(), "/r".into());
        assert!(cold_only(&cfg).unwrap().contains("SSH"));
        cfg.ssh = Some(vm::SshConfig {
            private_key: "/k/id".into(),
            user: "root".into(),
        });
        assert_eq!(cold_only(&cfg), None);
        cfg.start_paused = true;
        assert!(cold_only(&cfg).is_some());
        for mode in [StartMode::Cold, StartMode::Saved] {
            assert_eq!(
                serde_json::to_string(&mode).unwrap(),
                format!("\"{}\"", mode.name()),
                "inputs.json spells it so"
            );
        }
        assert_eq!(StartMode::default(), StartMode::Saved);
    }

    /// A restored `edu` reads back exactly as the booted kernel left it.
    #[test]
    #[ignore = "needs QEMU and a built kernel and image: run by cargo xtask test"]
    fn a_restored_guest_has_its_devices_config_space_back() {
        let g = crate::testing::guest();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let run = crate::cache::new_run_dir("saved-config").unwrap();
            let cfg = crate::guest::with_devices(
                &g.kernel,
                &g.initramfs,
                &g.ssh_key,
                vec![Device::Edu {
                    id: "edu0".into(),
                    dma_mask: None,
                }],
                &run,
            )
            .unwrap();
            let read = "od -A x -t x4 -v /sys/bus/pci/devices/0000:00:02.0/config | head -n 4";
            let mut cold_cfg = cfg.clone();
            cold_cfg.run_dir = run.join("cold");
            let cold = Vm::boot(cold_cfg).await.unwrap();
            let want = cold.exec_ok(read, Duration::from_secs(10)).await.unwrap();
            cold.shutdown().await.unwrap();
            // Twice: the first start may be the one that saves.
            for i in 0..2 {
                let mut c = cfg.clone();
                c.run_dir = run.join(format!("saved-{i}"));
                let vm = start(c).await.unwrap();
                assert!(vm.boot_timings().restored);
                let got = vm.exec_ok(read, Duration::from_secs(10)).await.unwrap();
                assert_eq!(got.stdout_str(), want.stdout_str(), "start {i}");
                // BAR0 decodes: edu's identification register reads back.
                vm.shutdown().await.unwrap();
            }
        });
    }
}
