//! Starting the harness's guest from a saved machine instead of booting it.
//!
//! A TCG boot is most of a short scenario's time. So each distinct machine
//! (kernel, initramfs, QEMU binary and the whole planned command line:
//! machine, SMMU, devices and their slots, memory, kernel command line) is
//! booted once to ready, logged into once (dropbear makes its host key at
//! the first login), saved with QEMU migration to a file in the cache
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
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::{self, ContentKey, KeyBuilder};
use crate::vm::{self, qemu::QemuPlan, Incoming, QemuCaps, Vm, VmConfig};
use crate::Error;

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

/// Bumped when what a saved machine holds, or how it is made, changes.
const FORMAT: &str = "1";

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

/// What `meta.json` of a saved machine says (for people; nothing reads it).
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    key: String,
    qemu: String,
    kernel: PathBuf,
    initrd: PathBuf,
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
pub fn saved_machine(cfg: &VmConfig, caps: &QemuCaps, plan: &QemuPlan) -> anyhow::Result<SavedMachine> {
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
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {} {mtime}", path.display(), meta.len()))
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
    let lock = tokio::task::spawn_blocking(move || lock(&lock_path))
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
    Ok(())
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
    let report = vm
        .save_state(&tmp.join("state"), SAVE_DEADLINE)
        .await?;
    let mut cursor = vm::ConsoleCursor::default();
    let console: Vec<String> = vm
        .console_since(&mut cursor)
        .into_iter()
        .map(|l| l.text)
        .collect();
    fs::write(tmp.join("console.txt"), console.join("\n") + "\n")?;
    let meta = Meta {
        key: key.to_string(),
        qemu: cfg.qemu.display().to_string(),
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        command_line: vm.command_line().to_string(),
        boot_s: booted.as_secs_f64(),
        save_s: report.took.as_secs_f64(),
        bytes: report.bytes,
    };
    fs::write(tmp.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    vm.shutdown().await.context("shut down the saved guest")?;
    Ok(())
}

fn lock(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_DEADLINE => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::infra(format!(
                    "{} stayed locked by another start saving this machine for over {} s",
                    path.display(),
                    LOCK_DEADLINE.as_secs()
                ))
                .into())
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {}", path.display()))
            }
        }
    }
}
