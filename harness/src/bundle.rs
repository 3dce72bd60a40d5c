//! `cargo xtask bundle TRIAL`: one trial of a run packed as a `.tar.gz` a
//! person can replay with only QEMU and ssh installed.
//!
//! A bundle holds the trial's kernel (`Image`, `config`), the initramfs and
//! its SSH key, the scenario file, the accepted snapshot, everything the
//! trial left in its artifact directory (console, traces, agent transcript,
//! QEMU command line as it ran, observations, result) and a `replay.sh`.
//! The replay boots the same machine from the run's recorded plan
//! (`qemu-plan.json`, see [`RecordedPlan`]) with the bundle's files, sends
//! the guest agent the very request lines the harness sent (the `->` lines
//! of the transcript, `requests.jsonl`) and compares each answer with the
//! one the harness got (`answers.jsonl`), then prints the MSI addresses and
//! ITS writes both saw. The agent is in the initramfs, so the replay needs
//! no Rust and no harness build.
//!
//! What the replay cannot do is said, not hidden: host steps (`hotplug`,
//! `unplug`, `kselftest`, `host_sleep`) go through the harness's QMP and
//! uploads and are not replayed; the bundle lists them and `replay.sh`
//! prints them. Answers that differ from run to run by nature (the kernel
//! log, a concurrent step's counts) are not compared.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::image::cmdline::READY_MARKER;
use crate::scenario::Inputs;
use crate::snapshot::result::TrialResult;
use crate::vm::qemu::{shell_quote, RecordedPlan, Runtime};
use crate::Error;

/// The guest command of an agent session (as `scenario::exec` starts it).
const AGENT_COMMAND: &str = crate::scenario::exec::AGENT_COMMAND;

/// Answers to these requests differ between two correct runs: not compared.
const VOLATILE_OPS: &[&str] = &["dmesg", "concurrent"];

/// A sentinel port in the planned argv, replaced by `$PORT` in the script.
const PORT_SENTINEL: u16 = 1;

/// How long `tar` may take to pack a bundle (a kernel image is ~40 MB).
const TAR_TIMEOUT: Duration = Duration::from_secs(300);

/// What `write` made.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    pub trial: String,
    pub requests: usize,
    /// Steps of the scenario the replay does not run (`step N (op)`).
    pub host_steps: Vec<String>,
    pub bytes: u64,
}

/// One line of an agent transcript (`session-N.log`).
#[derive(Debug, Clone, PartialEq)]
pub enum TranscriptLine {
    Request(String),
    Answer(String),
    /// The harness gave up on the request (`!!`): what it said.
    Failed(String),
}

/// The request and answer lines of a transcript, in order:
/// `[    0.306543] -> {...}`, `<- {...}`, `!! error`.
pub fn parse_transcript(text: &str) -> Vec<TranscriptLine> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('[')?.split_once("] ")?.1;
            let (dir, body) = rest.split_once(' ')?;
            Some(match dir {
                "->" => TranscriptLine::Request(body.to_string()),
                "<-" => TranscriptLine::Answer(body.to_string()),
                "!!" => TranscriptLine::Failed(body.to_string()),
                _ => return None,
            })
        })
        .collect()
}

/// What a request line is, for the replay's report: `hello`,
/// `step 4 option_set`, `dmesg`; and whether its answer is compared.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLabel {
    pub label: String,
    pub compared: bool,
}

/// Labels each request line with its scenario step (matched by request
/// against `observations.json`'s steps, in order) and its op.
pub fn label_requests(requests: &[String], observed_steps: &[Value]) -> Vec<RequestLabel> {
    let mut next = 0;
    requests
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            let (kind, body) = match v.as_object().and_then(|o| o.iter().next()) {
                Some((k, b)) => (k.clone(), b.clone()),
                None => ("?".into(), Value::Null),
            };
            if kind != "step" {
                return RequestLabel {
                    label: kind,
                    compared: true,
                };
            }
            let op = body.get("op").and_then(Value::as_str).unwrap_or("?");
            let compared = !VOLATILE_OPS.contains(&op);
            let step = observed_steps[next.min(observed_steps.len())..]
                .iter()
                .position(|s| s.get("request") == Some(&body))
                .map(|i| {
                    let at = next + i;
                    next = at + 1;
                    observed_steps[at].get("step").and_then(Value::as_u64)
                });
            let label = match step.flatten() {
                Some(n) => format!("step {n} {op}"),
                None => op.to_string(),
            };
            RequestLabel { label, compared }
        })
        .collect()
}

/// The scenario steps of `observations.json` that are host steps.
pub fn host_steps(observed_steps: &[Value]) -> Vec<String> {
    use crate::scenario::model::HostStep;
    observed_steps
        .iter()
        .filter_map(|s| {
            let op = s.get("request")?.get("op")?.as_str()?;
            HostStep::OPS.contains(&op).then(|| {
                let n = s.get("step").and_then(Value::as_u64).unwrap_or(0);
                format!("step {n} ({op})")
            })
        })
        .collect()
}

/// The devices of `observations.json` with their requester ids.
pub fn devices(observed: &Value) -> Vec<(String, String)> {
    observed
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let id = d.get("id")?.as_str()?;
            let rid = d.get("requester_id")?.as_str()?;
            // Both go into the script: only what QEMU ids and hex allow.
            let safe = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            (safe(id) && safe(rid)).then(|| (id.to_string(), rid.to_string()))
        })
        .collect()
}

/// The newest run below `runs_root` with a result for `trial`
/// (`<scenario>@<variant>`, as the summary names it).
pub fn find_run(runs_root: &Path, trial: &str) -> anyhow::Result<PathBuf> {
    let runs = crate::compare::load::list(runs_root)?;
    for run in &runs {
        if result_path(&run.dir, trial).is_file() {
            return Ok(run.dir.clone());
        }
    }
    let hint = match runs.first() {
        Some(newest) => {
            let names = trials_of(&newest.dir);
            format!(
                "; the newest run, {}, has {}",
                newest.dir.display(),
                if names.is_empty() {
                    "no trial results".to_string()
                } else {
                    names.join(", ")
                }
            )
        }
        None => String::new(),
    };
    Err(Error::infra(format!(
        "no run below {} has a result for trial `{trial}` (name it as the summary does: SCENARIO@VARIANT){hint}",
        runs_root.display()
    ))
    .into())
}

fn result_path(run: &Path, trial: &str) -> PathBuf {
    run.join("results").join(format!("{trial}.json"))
}

fn trials_of(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(run.join("results"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(String::from)
        })
        .collect();
    names.sort();
    names
}

/// Everything `replay.sh` is made from.
#[derive(Debug, Clone)]
pub struct ReplayScript {
    pub trial: String,
    pub reproducer: String,
    pub version_line: String,
    /// The QEMU argv after the program, with [`PORT_SENTINEL`] as the port.
    pub argv: Vec<String>,
    pub labels: Vec<RequestLabel>,
    pub host_steps: Vec<String>,
    pub harness_msi: Vec<String>,
    /// The devices under test and their requester ids (`edu0`, `0x10`):
    /// their ITS writes are compared (the NIC's vary with SSH traffic).
    pub devices: Vec<(String, String)>,
}

/// The argv of the bundle's machine: the run's plan with the bundle's
/// kernel and initramfs, sockets and traces in `replay/`, no saved state.
pub fn replay_argv(plan: RecordedPlan) -> anyhow::Result<Vec<String>> {
    plan.with_boot_files("kernel/Image", "image/initramfs.cpio.gz")?
        .argv(&Runtime {
            qmp_socket: Path::new("replay/qmp.sock"),
            trace_file: Path::new("replay/trace.log"),
            ssh_port: Some(PORT_SENTINEL),
            incoming: None,
        })
}

impl ReplayScript {
    /// The script's text (POSIX sh; qemu, ssh and coreutils).
    pub fn render(&self) -> String {
        let hostfwd = format!("hostfwd=tcp:127.0.0.1:{PORT_SENTINEL}-:22");
        let words: Vec<String> = self
            .argv
            .iter()
            .map(|a| match a.find(&hostfwd) {
                // The only value the script fills in: double quotes, and
                // nothing else in it a shell would expand.
                Some(_) if !a.contains(['"', '$', '`', '\\']) => {
                    format!(
                        "\"{}\"",
                        a.replace(&hostfwd, "hostfwd=tcp:127.0.0.1:$PORT-:22")
                    )
                }
                _ => shell_quote(std::slice::from_ref(a)),
            })
            .collect();
        let labels = self
            .labels
            .iter()
            .map(|l| {
                format!(
                    "{}\t{}",
                    if l.compared { "compare" } else { "skip" },
                    l.label
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let host = if self.host_steps.is_empty() {
            String::new()
        } else {
            self.host_steps.join(", ")
        };
        let msi = self.harness_msi.join(" ");
        let q = |s: &str| shell_quote(&[s.to_string()]);
        format!(
            r#"#!/bin/sh
# Replays {trial} from this bundle: boots the bundle's kernel and initramfs
# on the machine the harness planned, sends the guest agent the requests the
# harness sent (requests.jsonl, from the agent transcript) and compares each
# answer with the one the harness got (answers.jsonl).
#
# Needs only {qemu} (Debian: {qemu_pkg}; the run used
# {version}) and ssh ({ssh_pkg}). No Rust, no harness.
# Exit status: 0 the same answers, 1 an answer differs, 2 the replay could
# not run. Its own files go to replay/ (console, traces, answers).
# Environment: QEMU (the binary), BOOT_TIMEOUT and AGENT_TIMEOUT (seconds).
# The harness's reproducer, in a checkout: {reproducer}
set -u
cd "$(dirname "$0")" || exit 2
QEMU=${{QEMU:-{qemu}}}
BOOT_TIMEOUT=${{BOOT_TIMEOUT:-300}}
AGENT_TIMEOUT=${{AGENT_TIMEOUT:-600}}
need() {{
	command -v "$1" >/dev/null 2>&1 || {{ echo "replay.sh: $1 not found: install the Debian package $2" >&2; exit 2; }}
}}
need "$QEMU" {qemu_pkg}
need ssh {ssh_pkg}
need timeout coreutils
need od coreutils

TRIAL={trial_q}
HARNESS_MSI={msi_q}
HOST_STEPS={host_q}
DEVICES={devices_q}
LABELS={labels_q}

rm -rf replay && mkdir -m 0700 replay || exit 2
chmod 0600 image/id_key || exit 2
qemu_pid=
cleanup() {{
	if [ -n "$qemu_pid" ]; then
		kill "$qemu_pid" 2>/dev/null
		wait "$qemu_pid" 2>/dev/null
	fi
}}
trap cleanup EXIT
trap 'exit 2' HUP INT TERM

start_qemu() {{
	"$QEMU" \
		{argv} \
		</dev/null >replay/console.log 2>replay/qemu-stderr.log &
	qemu_pid=$!
}}

# The SSH forward's port is picked at random; one taken meanwhile makes
# QEMU exit at once, and another is tried.
tries=0
while :; do
	PORT=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000 ))
	start_qemu
	sleep 1
	kill -0 "$qemu_pid" 2>/dev/null && break
	wait "$qemu_pid" 2>/dev/null
	qemu_pid=
	tries=$((tries + 1))
	if [ "$tries" -ge 5 ] || ! grep -q 'Could not set up host forwarding rule' replay/qemu-stderr.log; then
		echo "replay.sh: QEMU exited at start:" >&2
		cat replay/qemu-stderr.log >&2
		exit 2
	fi
done
echo "replay.sh: $TRIAL: QEMU pid $qemu_pid, ssh on 127.0.0.1:$PORT; console in replay/console.log"

# /init prints the ready line once dropbear listens.
deadline=$(( $(date +%s) + BOOT_TIMEOUT ))
until grep -q {ready_q} replay/console.log 2>/dev/null; do
	if ! kill -0 "$qemu_pid" 2>/dev/null; then
		echo "replay.sh: QEMU exited during boot; see replay/console.log and replay/qemu-stderr.log" >&2
		exit 2
	fi
	if [ "$(date +%s)" -ge "$deadline" ]; then
		echo "replay.sh: no ready line on the console after $BOOT_TIMEOUT s; see replay/console.log" >&2
		exit 2
	fi
	sleep 1
done

[ -z "$HOST_STEPS" ] || echo "replay.sh: not replayed (host steps, done by the harness over QMP): $HOST_STEPS"
timeout "$AGENT_TIMEOUT" ssh -i image/id_key -p "$PORT" \
	-o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
	-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 \
	root@127.0.0.1 {agent_q} <requests.jsonl >replay/answers.jsonl 2>replay/agent-stderr.log
rc=$?
if [ "$rc" -ne 0 ]; then
	echo "replay.sh: the agent session ended with status $rc (124: after $AGENT_TIMEOUT s); see replay/agent-stderr.log" >&2
	cat replay/agent-stderr.log >&2
	exit 2
fi

same=0
differ=0
skipped=0
i=0
while IFS= read -r expected; do
	i=$((i + 1))
	got=$(sed -n "${{i}}p" replay/answers.jsonl)
	line=$(printf '%s\n' "$LABELS" | sed -n "${{i}}p")
	how=${{line%%	*}}
	what=${{line#*	}}
	if [ "$how" = skip ]; then
		skipped=$((skipped + 1))
	elif [ "$got" = "$expected" ]; then
		same=$((same + 1))
	else
		differ=$((differ + 1))
		echo "differs: $what"
		echo "  harness: $expected"
		echo "  replay:  ${{got:-(no answer)}}"
	fi
done <answers.jsonl
extra=$(( $(wc -l <replay/answers.jsonl) - i ))
if [ "$extra" -gt 0 ]; then
	differ=$((differ + 1))
	echo "differs: the replay got $extra answers more than the harness"
fi

msi() {{
	grep -o '"msi_config":{{[^}}]*"address":"0x[0-9a-f]*"' "$1" | sed 's/.*"address":"//; s/"$//' | sort -u | tr '\n' ' ' | sed 's/ $//'
}}
# A device's ITS writes: "COUNT offset O data D" for each distinct write.
its() {{
	if [ -f "$2" ]; then
		grep "gicv3_its_translation_write .*requester_id $1\$" "$2" |
			sed 's/.*write: //; s/ size [0-9]*//; s/ requester_id.*//' | sort | uniq -c |
			sed 's/^ *//' | tr '\n' ';' | sed 's/;$//; s/;/; /g'
	fi
}}
echo "answers: $same the same, $differ different, $skipped not compared (the kernel log and concurrent counts vary by nature)"
msi_r=$(msi replay/answers.jsonl)
echo "MSI address (msi_config): replay ${{msi_r:-none}}; the harness saw ${{HARNESS_MSI:-none}}"
for dev in $DEVICES; do
	id=${{dev%%=*}}
	rid=${{dev#*=}}
	r=$(its "$rid" replay/trace.log)
	h=$(its "$rid" recorded/trace.log)
	echo "ITS writes from $id (requester id $rid): replay ${{r:-none}}; the harness ${{h:-none}}"
	if [ "$r" != "$h" ]; then
		differ=$((differ + 1))
		echo "differs: the ITS writes from $id"
	fi
done
[ "$differ" -eq 0 ] || exit 1
exit 0
"#,
            trial = self.trial,
            qemu = crate::vm::qemu::QEMU,
            qemu_pkg = crate::programs::package_of(crate::vm::qemu::QEMU).unwrap_or("?"),
            ssh_pkg = crate::programs::package_of("ssh").unwrap_or("?"),
            version = self.version_line,
            reproducer = self.reproducer,
            trial_q = q(&self.trial),
            msi_q = q(&msi),
            host_q = q(&host),
            labels_q = q(&labels),
            argv = words.join(" \\\n\t\t"),
            ready_q = q(READY_MARKER),
            agent_q = q(AGENT_COMMAND),
            devices_q = q(&self
                .devices
                .iter()
                .map(|(id, rid)| format!("{id}={rid}"))
                .collect::<Vec<_>>()
                .join(" ")),
        )
    }
}

/// Packs `trial` of `run` into `<out_dir>/<trial>.tar.gz` (the top
/// directory inside is `<trial>/`).
pub fn write(run: &Path, trial: &str, out_dir: &Path) -> anyhow::Result<Bundle> {
    let result: TrialResult = crate::cache::read_json(&result_path(run, trial), "trial result")?;
    let inputs = Inputs::load(&run.join("inputs.json"))?;
    let kernel = inputs.kernels.get(&result.variant).ok_or_else(|| {
        Error::infra(format!(
            "{}: no kernel `{}` (the trial's variant) in the run's inputs",
            run.join("inputs.json").display(),
            result.variant
        ))
    })?;
    let artifacts = run.join("scenarios").join(trial);
    let plan: RecordedPlan = crate::cache::read_json(
        &artifacts.join(RecordedPlan::FILE),
        "recorded QEMU plan (runs before bundles existed have none: run the trial again)",
    )?;
    let transcript_path = artifacts.join("session-0.log");
    let transcript = fs::read_to_string(&transcript_path).map_err(|e| {
        Error::infra(format!(
            "cannot read the agent transcript {}: {e}",
            transcript_path.display()
        ))
    })?;
    let lines = parse_transcript(&transcript);
    if let Some(TranscriptLine::Failed(why)) = lines
        .iter()
        .find(|l| matches!(l, TranscriptLine::Failed(_)))
    {
        return Err(Error::infra(format!(
            "{}: the harness's own session failed ({why}); a replay would not show the kernel's behaviour",
            transcript_path.display()
        ))
        .into());
    }
    let requests: Vec<String> = lines
        .iter()
        .filter_map(|l| match l {
            TranscriptLine::Request(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let answers: Vec<String> = lines
        .iter()
        .filter_map(|l| match l {
            TranscriptLine::Answer(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    let observed: Value =
        crate::cache::read_json(&artifacts.join("observations.json"), "observations")?;
    let steps = observed
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let script = ReplayScript {
        trial: trial.to_string(),
        reproducer: result.reproducer.clone(),
        version_line: plan.version_line.clone(),
        argv: replay_argv(plan)?,
        labels: label_requests(&requests, &steps),
        host_steps: host_steps(&steps),
        harness_msi: result.msi_addresses.clone(),
        devices: devices(&observed),
    };

    let staging = tempfile::Builder::new()
        .prefix("msi-bundle-")
        .tempdir()
        .context("create the bundle's staging dir")?;
    let top = staging.path().join(trial);
    let copy = |from: &Path, to: &str| -> anyhow::Result<()> {
        let dest = top.join(to);
        fs::create_dir_all(dest.parent().expect("a file in the bundle"))?;
        fs::copy(from, &dest).map(|_| ()).map_err(|e| {
            Error::infra(format!(
                "cannot copy {} into the bundle: {e}",
                from.display()
            ))
            .into()
        })
    };
    copy(&kernel.image, "kernel/Image")?;
    copy(&kernel.config, "kernel/config")?;
    copy(&inputs.initramfs, "image/initramfs.cpio.gz")?;
    copy(&inputs.ssh_private_key, "image/id_key")?;
    let scenario_file = crate::scenario::scenarios_dir().join(format!("{}.toml", result.scenario));
    copy(
        &scenario_file,
        &format!("scenario/{}.toml", result.scenario),
    )?;
    let snapshots = crate::snapshot::snapshot_dir();
    let compared_as = crate::pipeline::compared_as(&crate::pipeline::KernelRequest::Variant(
        result.variant.clone(),
    ))
    .unwrap_or_else(|_| result.variant.clone());
    let snap_name = format!(
        "{}.snap",
        crate::snapshot::snapshot_name(&result.scenario, &compared_as)
    );
    let snap = snapshots.join(&snap_name);
    let has_snapshot = snap.is_file();
    if has_snapshot {
        copy(&snap, &format!("expected/{snap_name}"))?;
    }
    for entry in
        fs::read_dir(&artifacts).with_context(|| format!("read {}", artifacts.display()))?
    {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            copy(&entry.path(), &format!("recorded/{name}"))?;
        }
    }
    copy(&result_path(run, trial), "recorded/result.json")?;
    let write_file = |name: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = top.join(name);
        fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let jsonl = |v: &[String]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    write_file("requests.jsonl", &jsonl(&requests), 0o644)?;
    write_file("answers.jsonl", &jsonl(&answers), 0o644)?;
    write_file("replay.sh", &script.render(), 0o755)?;
    write_file(
        "README.txt",
        &readme(&result, &script, has_snapshot.then_some(snap_name.as_str())),
        0o644,
    )?;

    fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let path = out_dir.join(format!("{trial}.tar.gz"));
    let log = crate::process::Log::create(&staging.path().join("tar.log"))?;
    crate::process::cmd("tar")
        .arg("-czf")
        .arg(&path)
        .arg("-C")
        .arg(staging.path())
        .arg(trial)
        .output(TAR_TIMEOUT, &log)
        .with_context(|| format!("pack {}", path.display()))?;
    let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Bundle {
        path,
        trial: trial.to_string(),
        requests: requests.len(),
        host_steps: script.host_steps.clone(),
        bytes,
    })
}

fn readme(result: &TrialResult, script: &ReplayScript, snapshot: Option<&str>) -> String {
    let mut s = format!(
        "{trial}: {outcome:?} on kernel {release}\n\n",
        trial = result.name(),
        outcome = result.outcome,
        release = result.kernel_release,
    );
    if let Some(reason) = &result.reason {
        s.push_str(reason.trim_end());
        s.push_str("\n\n");
    }
    s.push_str(&format!(
        "MSI addresses the harness saw: {}\nInterrupts delivered: {}\n\n",
        if result.msi_addresses.is_empty() {
            "none".to_string()
        } else {
            result.msi_addresses.join(", ")
        },
        result.interrupts_delivered
    ));
    s.push_str(
        "Replay it: ./replay.sh (needs QEMU for arm64 and ssh; exit 0 the same answers, 1 one differs, 2 it could not run)\n\
         \n\
         kernel/Image, kernel/config      the kernel the trial ran\n\
         image/initramfs.cpio.gz, id_key  the guest (busybox, dropbear, msi-agent) and its SSH key\n\
         scenario/                        the scenario file\n",
    );
    match snapshot {
        Some(name) => s.push_str(&format!(
            "expected/{name:<24}the accepted snapshot it was compared with\n"
        )),
        None => s.push_str(
            "expected/                        (none: this variant has no accepted snapshot)\n",
        ),
    }
    s.push_str(
        "recorded/                        what the trial left: console.log, trace.log, session-0.log (agent transcript),\n\
         \x20                                qemu-cmdline.sh (as run), qemu-plan.json, observations.json, result.json\n\
         requests.jsonl, answers.jsonl    the transcript's requests and answers, one per line\n",
    );
    if !script.host_steps.is_empty() {
        s.push_str(&format!(
            "\nNot replayed (host steps, done by the harness over QMP): {}\n",
            script.host_steps.join(", ")
        ));
    }
    s.push_str(&format!("\nIn a checkout: {}\n", result.reproducer));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSCRIPT: &str = r#"[    0.306543] -> {"hello":{"version":3}}
[    0.383155] -> {"step":{"op":"dmesg"}}
[    0.406041] <- {"step":{"ok":{"dmesg":["[    0.000000] Booting"]}}}
[    0.407216] -> {"step":{"op":"open_device","device":"edu0","bdf":"0000:00:02.0"}}
[    0.413000] <- {"step":{"ok":{"cdev":"/dev/vfio/devices/vfio0"}}}
[    0.466915] -> {"step":{"op":"msi_config","device":"edu0"}}
[    0.471596] <- {"step":{"ok":{"msi_config":{"enabled":true,"address":"0x8000040","data":"0x0","vectors":1,"max_vectors":1}}}}
"#;

    #[test]
    fn a_transcript_splits_into_requests_and_answers_in_order() {
        let lines = parse_transcript(TRANSCRIPT);
        assert_eq!(lines.len(), 7);
        assert_eq!(
            lines[0],
            TranscriptLine::Request(r#"{"hello":{"version":3}}"#.into())
        );
        assert!(matches!(&lines[2], TranscriptLine::Answer(a) if a.contains("Booting")));
        let failed = parse_transcript("[    1.000000] !! in guest session: timed out\n");
        assert_eq!(
            failed,
            vec![TranscriptLine::Failed("in guest session: timed out".into())]
        );
    }

    #[test]
    fn requests_are_labelled_with_their_scenario_step_and_the_kernel_log_is_not_compared() {
        let requests: Vec<String> = parse_transcript(TRANSCRIPT)
            .into_iter()
            .filter_map(|l| match l {
                TranscriptLine::Request(r) => Some(r),
                _ => None,
            })
            .collect();
        let steps: Vec<Value> = serde_json::from_str(
            r#"[{"step":1,"request":{"op":"open_device","bdf":"0000:00:02.0","device":"edu0"}},
                {"step":2,"request":{"op":"hotplug","device":{"kind":"edu","id":"edu1"}}},
                {"step":3,"request":{"op":"msi_config","device":"edu0"}}]"#,
        )
        .unwrap();
        let labels = label_requests(&requests, &steps);
        let text: Vec<(&str, bool)> = labels
            .iter()
            .map(|l| (l.label.as_str(), l.compared))
            .collect();
        assert_eq!(
            text,
            [
                ("hello", true),
                ("dmesg", false),
                ("step 1 open_device", true),
                ("step 3 msi_config", true)
            ]
        );
        assert_eq!(host_steps(&steps), ["step 2 (hotplug)"]);
    }

    fn plan() -> RecordedPlan {
        RecordedPlan {
            qemu: format!("/usr/bin/{}", crate::vm::qemu::QEMU).into(),
            version_line: "QEMU emulator version 10.0.2".into(),
            args: [
                "-machine",
                "virt,gic-version=3,its=on,iommu=smmuv3",
                "-kernel",
                "/root/.cache/msi-harness/kernel/out/b01d/Image",
                "-initrd",
                "/root/.cache/msi-harness/images/51a3/initramfs.cpio.gz",
                "-append",
                "console=ttyAMA0 rdinit=/init msi.vfio=0000:00:02.0",
            ]
            .map(String::from)
            .into(),
            trace_events: vec!["gicv3_its_translation_write".into()],
        }
    }

    #[test]
    fn the_replayed_machine_boots_the_bundles_files_with_its_own_port_and_no_saved_state() {
        let argv = replay_argv(plan()).unwrap();
        let text = argv.join(" ");
        assert!(text.contains("-kernel kernel/Image -initrd image/initramfs.cpio.gz"));
        assert!(text.contains("path=replay/qmp.sock"));
        assert!(text.contains("enable=gicv3_its_translation_write,file=replay/trace.log"));
        assert!(!text.contains("-incoming"));
        assert!(!text.contains("/root/.cache"));
        let script = ReplayScript {
            trial: "custom-window-before-attach@sw-msi-rfcv2".into(),
            reproducer: "cargo xtask test --variant sw-msi-rfcv2 custom-window-before-attach"
                .into(),
            version_line: "QEMU emulator version 10.0.2".into(),
            argv,
            labels: vec![RequestLabel {
                label: "hello".into(),
                compared: true,
            }],
            host_steps: vec![],
            harness_msi: vec!["0x8000040".into()],
            devices: devices(&serde_json::json!({
                "devices": [{"id": "edu0", "requester_id": "0x10"}, {"id": "x;rm", "requester_id": "0x8"}]
            })),
        }
        .render();
        // The port is the one thing the shell fills in; all else is quoted.
        assert!(script.contains(r#""user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:22""#));
        assert!(script.contains("'console=ttyAMA0 rdinit=/init msi.vfio=0000:00:02.0'"));
        assert!(script.contains("HARNESS_MSI=0x8000040"));
        // An id a shell would read as more than a word is left out.
        assert!(script.contains("DEVICES='edu0=0x10'\n"), "{script}");
        assert!(script.contains(&format!("grep -q {READY_MARKER} replay/console.log")));
        assert!(!script.contains(":1-:22"));
    }

    #[test]
    fn a_missing_plan_entry_is_named() {
        let mut p = plan();
        p.args
            .retain(|a| a != "-initrd" && !a.ends_with(".cpio.gz"));
        let err = replay_argv(p).unwrap_err().to_string();
        assert!(err.contains("`-initrd FILE`"), "{err}");
    }
}
