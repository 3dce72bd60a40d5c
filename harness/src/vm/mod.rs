//! vm stage: QEMU under TCG, QMP, SSH, serial console, traces, teardown (issue 5).
