use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// Whether `pid` is a live process (a zombie is not: it only waits for its
/// parent, or for an init that may never reap it in a container).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
    }
}

/// Waits (briefly) for a killed process to be gone.
fn gone(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The pid a script wrote to `file`, once it has.
fn pid_in(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn sh(script: &str) -> Cmd {
    let mut c = cmd("sh");
    c.arg("-c").arg(script);
    c
}

#[test]
fn the_deadline_kills_the_whole_group_including_grandchildren() {
    let mut pids = Vec::new();
    let mut on_line = |_: Stream, line: &str| pids.push(line.parse::<i32>().unwrap());
    let started = Instant::now();
    let err = sh("sleep 100 & echo $!; sleep 100")
        .run(
            Duration::from_secs(1),
            Io {
                on_line: Some(&mut on_line),
                ..Io::quiet()
            },
        )
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1) + TERM_GRACE);
    let msg = err.to_string();
    assert!(
        msg.starts_with("`sh -c 'sleep 100 & echo $!; sleep 100'` did not finish within 1.0 s"),
        "{msg}"
    );
    assert_eq!(
        crate::outcome::exit_code_of(&err),
        crate::ExitCode::Infrastructure
    );
    assert_eq!(pids.len(), 1, "the grandchild's pid is the first line");
    assert!(
        gone(pids[0]),
        "grandchild {} outlived the deadline",
        pids[0]
    );
}

/// The bug this module fixed: a timed-out `make` lost its leader only.
#[test]
#[ignore = "needs make (cargo xtask deps installs it): run by cargo xtask test"]
fn a_timed_out_make_loses_its_jobs_too() {
    crate::testing::program("make");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Makefile"),
        // Each job's shell starts a process make does not know of.
        "all: a b\na b:\n\tsleep 100 & echo $$! > $@.pid; wait\n",
    )
    .unwrap();
    let err = cmd("make")
        .arg("-j2")
        .arg("-C")
        .arg(dir.path())
        .run(Duration::from_secs(2), Io::quiet())
        .unwrap_err();
    assert!(
        err.to_string().contains("did not finish within 2.0 s"),
        "{err}"
    );
    for job in ["a", "b"] {
        let pid = pid_in(&dir.path().join(format!("{job}.pid"))).unwrap();
        assert!(
            gone(pid),
            "make's job {job} (pid {pid}) outlived the deadline"
        );
    }
}

#[test]
fn a_grandchild_holding_the_pipes_does_not_hold_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let started = Instant::now();
    let done = sh(&format!(
        "(sleep 100 & echo $! > {}); echo hi",
        quote(&pid_file.display().to_string())
    ))
    .run(Duration::from_secs(60), Io::quiet())
    .unwrap()
    .check()
    .unwrap();
    assert!(
        started.elapsed() < LINGER + Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(done.stdout_text(), "hi\n");
    let pid = pid_in(&pid_file).unwrap();
    assert!(gone(pid), "the lingering grandchild {pid} was not killed");

    // Nor past the deadline when that comes first.
    let started = Instant::now();
    let done = sh("(sleep 100 &); echo hi")
        .run(Duration::from_millis(500), Io::quiet())
        .unwrap();
    assert!(done.success());
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[test]
fn a_failure_names_the_command_its_status_time_and_last_lines() {
    let script = "for i in $(seq 1 30); do echo line$i; done; echo oops >&2; exit 3";
    let err = sh(script)
        .run(Duration::from_secs(30), Io::quiet())
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    let head = format!("`sh -c {}` failed (exit status: 3) after ", quote(script));
    assert!(err.starts_with(&head), "{err}");
    // The last 20 lines: 12..30 and stderr's.
    assert!(err.ends_with("line29\nline30\noops"), "{err}");
    assert!(
        err.contains("\nline12\n") && !err.contains("line11"),
        "{err}"
    );
}

#[test]
fn a_missing_program_is_named_with_its_package() {
    let empty = tempfile::tempdir().unwrap();
    let err = cmd("rsync")
        .arg("--version")
        .env("PATH", empty.path())
        .run(Duration::from_secs(10), Io::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`rsync` is not installed: install the Debian package `rsync`"),
        "{err}"
    );
}

#[test]
fn dropping_a_running_command_kills_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let running = sh(&format!(
        "sleep 100 & echo $! > {}; sleep 100",
        quote(&pid_file.display().to_string())
    ))
    .start(Duration::from_secs(600), Io::quiet())
    .unwrap();
    let leader = running.pid();
    let until = Instant::now() + Duration::from_secs(10);
    let grandchild = loop {
        if let Some(pid) = pid_in(&pid_file) {
            break pid;
        }
        assert!(Instant::now() < until, "the script did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let started = Instant::now();
    drop(running);
    assert!(started.elapsed() <= TERM_GRACE + Duration::from_secs(1));
    assert!(!alive(leader), "the leader was not killed and reaped");
    assert!(
        gone(grandchild),
        "grandchild {grandchild} outlived the drop"
    );
}

#[test]
fn streams_are_logged_and_handed_over_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::create(&dir.path().join("logs/stage.log")).unwrap();
    let mut lines = Vec::new();
    let mut on_line = |s: Stream, l: &str| lines.push((s, l.to_string()));
    let done = sh("echo out; echo err >&2; printf 'no newline'")
        .env("X", "a b")
        .run(
            Duration::from_secs(10),
            Io {
                on_line: Some(&mut on_line),
                ..Io::log(&log)
            },
        )
        .unwrap();
    assert!(done.success());
    assert_eq!(done.stdout_text(), "out\nno newline");
    assert_eq!(done.stderr, vec!["err"]);
    let of = |stream: Stream| -> Vec<&str> {
        lines
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.as_str())
            .collect()
    };
    assert_eq!(of(Stream::Stdout), vec!["out", "no newline"]);
    assert_eq!(of(Stream::Stderr), vec!["err"]);
    let text = std::fs::read_to_string(log.path()).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        r#"$ X='a b' sh -c "echo out; echo err >&2; printf 'no newline'""#
    );
    assert!(
        text.contains("\nout\n") && text.contains("\nerr\n"),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("# exit status: 0 after "),
        "{text}"
    );

    // Kept stdout is not logged, and comes back byte for byte.
    let done = sh("printf 'a\\0b\\n'; echo e >&2")
        .run(
            Duration::from_secs(10),
            Io {
                stdout: Stdout::Keep,
                ..Io::log(&log)
            },
        )
        .unwrap();
    assert_eq!(done.stdout, b"a\0b\n");
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("  # stdout not logged\ne\n# exit status: 0 after "));
    assert!(text.contains(", stdout 4 bytes (not logged)"), "{text}");
}

#[test]
fn stdin_bytes_env_and_dir_reach_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = sh("cat; echo \"$V\"; pwd; echo \"${HOME-unset}\"")
        .stdin_bytes(b"in\n".to_vec())
        .env("V", "v")
        .env_remove("HOME")
        .current_dir(dir.path())
        .run(Duration::from_secs(10), Io::quiet())
        .unwrap()
        .stdout_text();
    let pwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(out, format!("in\nv\n{}\nunset\n", pwd.display()));
}

#[test]
fn the_child_has_its_own_process_group() {
    let out = sh("cut -d' ' -f5 /proc/$$/stat; echo $$")
        .run(Duration::from_secs(10), Io::quiet())
        .unwrap()
        .stdout_text();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{out}");
    assert_eq!(words[0], words[1], "pgid is not the child's own pid");
}

#[test]
fn words_are_quoted_for_a_shell_with_shlex() {
    assert_eq!(quote("0000:00:02.0"), "0000:00:02.0");
    assert_eq!(quote("a b"), "'a b'");
    assert_eq!(quote(""), "''");
    assert_eq!(quote("$(reboot)"), "'$(reboot)'");
    assert_eq!(
        display(["make", "O=/b", "CC=ccache gcc", "it's"]),
        r#"make 'O=/b' 'CC=ccache gcc' "it's""#
    );
    // Read back by a real shell as the same words.
    let words = ["a b", "it's", "$HOME", "x\"y", "", "-"];
    let out = sh(&format!("printf '%s\\n' {}", display(words)))
        .run(Duration::from_secs(10), Io::quiet())
        .unwrap()
        .stdout_text();
    assert_eq!(out, words.map(|w| format!("{w}\n")).concat());
}

/// Every external program the harness and xtask start goes through this
/// module (its own group, a deadline, the group killed on the deadline and
/// on drop). Outside it only these start processes with `std::process`:
const STD_PROCESS_ALLOWED: &[(&str, &str)] = &[
    ("harness/src/process", "the runner itself"),
    (
        "harness/src/vm/",
        "QEMU: vm::process (waiter thread, PDEATHSIG) and the capability probe",
    ),
    (
        "harness/src/image/tests.rs",
        "the image VM test's own QEMU, read while it runs",
    ),
    (
        "xtask/src/boot.rs",
        "`xtask shell`: the interactive ssh must stay in the terminal's foreground group",
    ),
];

#[test]
fn every_external_command_goes_through_the_runner() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let re =
        regex::Regex::new(r"Command::new\(|std::process::(Command\b|\{[^}]*\bCommand\b)").unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("harness/src"), root.join("xtask/src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut offenders = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if STD_PROCESS_ALLOWED.iter().any(|(p, _)| rel.starts_with(p)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if re.is_match(line) && !line.trim_start().starts_with("//") {
                offenders.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "start these through harness::process::cmd, not std::process::Command:\n{}",
        offenders.join("\n")
    );
    // The check sees what it is meant to.
    assert!(re.is_match(r#"let c = Command::new("make");"#));
    assert!(re.is_match("use std::process::{Child, Command, Stdio};"));
    assert!(!re.is_match("use std::os::unix::process::CommandExt;"));
}

/// `bless` sets `INSTA_UPDATE=always` on the command the suite's runner
/// already set `no` on: the later setting is the one the child sees.
#[test]
fn a_later_env_replaces_an_earlier_one() {
    let mut cmd = sh("echo \"$X${Y-unset}\"");
    cmd.env("X", "first")
        .env("X", "second")
        .env("Y", "y")
        .env_remove("Y");
    let out = cmd.run(Duration::from_secs(10), Io::quiet()).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "secondunset");
}
