//! Tests of the image stage: archive reproducibility, cache keys, the
//! shipped image.toml, and (ignored unless run by `cargo xtask test`) a real
//! build booted under QEMU and logged into over SSH.

use std::collections::BTreeMap;

use super::*;

fn package(name: &str, sha: char) -> Package {
    Package {
        name: name.into(),
        version: "1.0-1".into(),
        sha256: sha.to_string().repeat(64),
    }
}

const SPEC: &str = r#"
[image]
arch = "arm64"

[[dir]]
path = "/root"
mode = 0o700

[[file]]
path = "/init"
mode = 0o755
source = "init"

[[file]]
path = "/bin/msi-agent"
mode = 0o755
generated = "agent"

[[file]]
path = "/root/.ssh/authorized_keys"
mode = 0o600
generated = "authorized-keys"

[[symlink]]
path = "/bin/sh"
target = "busybox"

[[device]]
path = "/dev/console"
kind = "char"
mode = 0o600
major = 5
minor = 1
"#;

fn inputs() -> (Spec, Tree, BTreeMap<String, Vec<u8>>, GeneratedFiles) {
    let spec = Spec::parse(SPEC, "image.toml").unwrap();
    let mut pkg = Tree::new();
    pkg.insert(
        "bin".into(),
        Entry {
            mode: 0o755,
            kind: Kind::Dir,
        },
    );
    pkg.insert(
        "bin/busybox".into(),
        Entry {
            mode: 0o755,
            kind: Kind::File(vec![1, 2, 3]),
        },
    );
    pkg.insert(
        "root".into(),
        Entry {
            mode: 0o755,
            kind: Kind::Dir,
        },
    );
    let sources = BTreeMap::from([("init".to_string(), b"#!/bin/sh\n".to_vec())]);
    let generated = GeneratedFiles {
        agent: vec![0x7f, b'E', b'L', b'F'],
        authorized_keys: b"ssh-ed25519 AAAA k\n".to_vec(),
    };
    (spec, pkg, sources, generated)
}

#[test]
fn same_inputs_give_identical_bytes() {
    let (spec, pkg, sources, generated) = inputs();
    let origin = BTreeMap::new();
    let a = encode(&assemble(&spec, pkg.clone(), &origin, &sources, &generated).unwrap()).unwrap();
    // The same content inserted in another order.
    let mut reversed = Tree::new();
    for (k, v) in pkg.iter().rev() {
        reversed.insert(k.clone(), v.clone());
    }
    let b = encode(&assemble(&spec, reversed, &origin, &sources, &generated).unwrap()).unwrap();
    assert_eq!(a, b);
    // gzip header: no name, mtime 0.
    assert_eq!(&a[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
}

#[test]
fn assembled_tree_has_parents_modes_and_generated_files() {
    let (spec, pkg, sources, generated) = inputs();
    let tree = assemble(&spec, pkg, &BTreeMap::new(), &sources, &generated).unwrap();
    let gz = encode(&tree).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    let back = cpio::read(&raw).unwrap();
    assert_eq!(back, tree);
    // Declared directory modes win over a package's.
    assert_eq!(back["root"].mode, 0o700);
    // Parents that nobody declared exist, as 0755 directories.
    assert_eq!(
        back["root/.ssh"],
        Entry {
            mode: 0o755,
            kind: Kind::Dir
        }
    );
    assert_eq!(back["dev"].kind, Kind::Dir);
    assert_eq!(back["root/.ssh/authorized_keys"].mode, 0o600);
    assert_eq!(
        back["root/.ssh/authorized_keys"].kind,
        Kind::File(b"ssh-ed25519 AAAA k\n".to_vec())
    );
    assert_eq!(
        back["bin/msi-agent"].kind,
        Kind::File(vec![0x7f, b'E', b'L', b'F'])
    );
    assert_eq!(back["init"].kind, Kind::File(b"#!/bin/sh\n".to_vec()));
    assert_eq!(
        back["dev/console"].kind,
        Kind::CharDevice { major: 5, minor: 1 }
    );
}

#[test]
fn a_declared_file_may_not_shadow_a_package_file() {
    let (spec, mut pkg, sources, generated) = inputs();
    pkg.insert(
        "init".into(),
        Entry {
            mode: 0o755,
            kind: Kind::File(vec![]),
        },
    );
    let origin = BTreeMap::from([("init".to_string(), "busybox-static".to_string())]);
    let e = assemble(&spec, pkg, &origin, &sources, &generated)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "guest-images/image.toml: /init is also in package busybox-static"
    );
}

#[test]
fn a_file_below_a_non_directory_is_refused() {
    let (spec, mut pkg, sources, generated) = inputs();
    pkg.insert(
        "dev".into(),
        Entry {
            mode: 0o777,
            kind: Kind::Symlink("x".into()),
        },
    );
    let e = assemble(&spec, pkg, &BTreeMap::new(), &sources, &generated)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/console is below /dev, which is not a directory"),
        "{e}"
    );
}

#[test]
fn cache_key_follows_every_input() {
    let sources = BTreeMap::from([("init".to_string(), b"#!/bin/sh\n".to_vec())]);
    let pkgs = vec![package("busybox-static", 'a'), package("libc6", 'b')];
    let base = image_key(SPEC, &sources, &pkgs, "agent1");
    assert_eq!(base, image_key(SPEC, &sources, &pkgs, "agent1"));

    let mut changed = Vec::new();
    changed.push(image_key(
        &format!("{SPEC}\n# comment"),
        &sources,
        &pkgs,
        "agent1",
    ));
    let other_init = BTreeMap::from([("init".to_string(), b"#!/bin/sh -x\n".to_vec())]);
    changed.push(image_key(SPEC, &other_init, &pkgs, "agent1"));
    let renamed = BTreeMap::from([("init2".to_string(), b"#!/bin/sh\n".to_vec())]);
    changed.push(image_key(SPEC, &renamed, &pkgs, "agent1"));
    let mut other_sha = pkgs.clone();
    other_sha[1].sha256 = "c".repeat(64);
    changed.push(image_key(SPEC, &sources, &other_sha, "agent1"));
    let mut other_version = pkgs.clone();
    other_version[0].version = "1.0-2".into();
    changed.push(image_key(SPEC, &sources, &other_version, "agent1"));
    changed.push(image_key(SPEC, &sources, &pkgs, "agent2"));
    for (i, k) in changed.iter().enumerate() {
        assert_ne!(*k, base, "change {i} did not change the key");
    }
}

#[test]
fn the_shipped_image_toml_is_valid() {
    let root = project_root().join("guest-images");
    let text = fs::read_to_string(root.join("image.toml")).unwrap();
    let spec = Spec::parse(&text, SPEC_FILE).unwrap();
    for rel in spec.sources() {
        assert!(
            root.join(rel).is_file(),
            "{rel} named in image.toml is missing"
        );
    }
    // What /init and dropbear rely on (domain notes §5b).
    let names: Vec<&str> = spec.packages.iter().map(|p| p.name.as_str()).collect();
    for needed in [
        "busybox-static",
        "dropbear-bin",
        "libtomcrypt1",
        "libtommath1",
        "libgmp10",
        "zlib1g",
        "libcrypt1",
        "libc6",
        "libgcc-s1",
    ] {
        assert!(names.contains(&needed), "{needed} missing");
    }
    let file = |p: &str| spec.files.iter().find(|f| f.path == p).unwrap();
    assert_eq!(
        file("etc/passwd").content,
        Content::Text("root:x:0:0:root:/root:/bin/sh\n".into())
    );
    assert_eq!(file("root/.ssh/authorized_keys").mode, 0o600);
    assert_eq!(file("init").mode, 0o755);
    let dir = |p: &str| spec.dirs.iter().find(|d| d.path == p).unwrap().mode;
    assert_eq!(dir("root"), 0o700);
    assert_eq!(dir("root/.ssh"), 0o700);
    assert!(spec.exclude.iter().any(|e| e == "usr/share"));
}

#[test]
fn init_prints_the_marker_the_harness_waits_for() {
    let init = fs::read_to_string(project_root().join("guest-images/init")).unwrap();
    assert!(init.starts_with("#!/bin/sh\n"));
    assert!(init.contains(&format!("echo \"{READY_MARKER} uptime=")));
    for param in ["msi.vfio=", "msi.hugepages="] {
        assert!(init.contains(param), "init does not read {param}");
    }
}

/// Builds the image again (it must be the one `cargo xtask test` built, from
/// the cache), boots it through `harness::vm` with the inputs' kernel, one
/// edu bound to vfio-pci and 16 huge pages, and checks over SSH that `/init`
/// did what the command line asked.
#[test]
#[ignore = "needs a booted guest: run by cargo xtask test"]
fn vm_boot_and_ssh() {
    let guest = crate::testing::guest();
    let run_dir = crate::cache::new_run_dir("image-vm-test").unwrap();
    let t = std::time::Instant::now();
    let image = build(&crate::event::Quiet, &run_dir).unwrap();
    eprintln!(
        "build: {:.2}s cached={} key={}",
        t.elapsed().as_secs_f64(),
        image.cached,
        image.key.short()
    );
    assert!(
        image.cached,
        "the image `cargo xtask test` built was rebuilt"
    );
    assert_eq!(image.initramfs, guest.initramfs);
    assert_eq!(image.ssh_private_key, guest.ssh_key);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut cfg = crate::guest::config(
            &guest.kernel,
            &image.initramfs,
            &image.ssh_private_key,
            &run_dir.join("vm"),
        );
        cfg.devices = vec![crate::vm::Device::Edu {
            id: "edu0".into(),
            dma_mask: None,
        }];
        let caps = crate::vm::probe(&cfg.qemu).unwrap();
        let plan = crate::vm::qemu::plan(&cfg, &caps).unwrap();
        crate::guest::bind_vfio(&mut cfg, crate::guest::edu_bdfs(&plan), Some(16));
        cfg.trace_events.clear();
        let vm = crate::vm::Vm::boot(cfg).await.expect("boot");
        eprintln!("boot phases:\n{}", vm.boot_timings());
        let console = fs::read_to_string(vm.run_dir().join("console.log")).unwrap();
        let ready = console
            .lines()
            .find_map(ReadyReport::parse)
            .unwrap_or_else(|| panic!("no {READY_MARKER} line on the console:\n{console}"));
        assert!(
            ready.problems().is_empty(),
            "{:?}\n{console}",
            ready.problems()
        );
        let bdf = vm.device("edu0").unwrap().bdf.to_string();
        let out = vm
            .exec_ok(
                "ls /dev/vfio/devices; cat /proc/cmdline; grep HugePages_Total /proc/meminfo",
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap()
            .stdout_str();
        eprintln!("{out}");
        assert!(out.contains("vfio0"), "{out}");
        assert!(out.contains(&format!("msi.vfio={bdf}")), "{out}");
        assert!(out.contains("HugePages_Total:      16"), "{out}");
        vm.shutdown().await.unwrap();
    });
}
