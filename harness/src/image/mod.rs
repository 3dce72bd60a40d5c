//! image stage: the guest initramfs with busybox, dropbear and the agent (issue 4).
