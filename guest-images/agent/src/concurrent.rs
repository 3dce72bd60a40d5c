//! `concurrent` steps: branches of iommufd/VFIO ioctls on their own
//! threads, counted per outcome. Names are resolved to file descriptors and
//! kernel ids before any thread starts, so the threads only issue ioctls on
//! shared references (an ioctl needs no exclusive access to its fd); what
//! comes back is how often each step answered what, never in which order,
//! so a snapshot of it does not depend on the interleaving.

use std::collections::BTreeMap;
use std::fs::File;

use msi_protocol::{errno_name, BranchOutcome};

use crate::device::Device;
use crate::session::iommu_option;
use crate::sys::{Failure, Outcome};

/// One branch step, ready to issue.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    Option {
        iommufd: &'a File,
        option_id: u32,
        op: u16,
        object_id: u32,
        val64: u64,
    },
    Attach {
        device: &'a Device,
        pt_id: u32,
    },
    Detach {
        device: &'a Device,
    },
}

impl Call<'_> {
    fn issue(self) -> Outcome<()> {
        match self {
            Call::Option {
                iommufd,
                option_id,
                op,
                object_id,
                val64,
            } => iommu_option(iommufd, option_id, op, object_id, val64).map(drop),
            Call::Attach { device, pt_id } => device.attach(pt_id).map(drop),
            Call::Detach { device } => device.detach(),
        }
    }
}

/// A branch, resolved.
pub struct Plan<'a> {
    pub name: String,
    pub iterations: u32,
    pub calls: Vec<Call<'a>>,
}

/// Runs the branches at once (all threads start together) and counts what
/// each call answered. An agent-side failure (not an errno) stops nothing:
/// it cannot happen after resolution, and is counted under its message.
pub fn run(plans: Vec<Plan<'_>>, duration: Option<std::time::Duration>) -> Vec<BranchOutcome> {
    let start = std::sync::Barrier::new(plans.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| {
                let start = &start;
                scope.spawn(move || {
                    let mut counts = vec![BTreeMap::<String, u32>::new(); plan.calls.len()];
                    start.wait();
                    let began = std::time::Instant::now();
                    let mut done = 0;
                    for _ in 0..plan.iterations {
                        if duration.is_some_and(|d| began.elapsed() >= d) {
                            break;
                        }
                        done += 1;
                        for (call, count) in plan.calls.iter().zip(counts.iter_mut()) {
                            let outcome = match call.issue() {
                                Ok(()) => "ok".to_string(),
                                Err(Failure::Errno { errno, .. }) => errno_name(errno)
                                    .map_or_else(|| format!("E{errno}"), str::to_string),
                                Err(Failure::Returned { rc, .. }) => format!("returned {rc}"),
                                Err(Failure::Agent(m)) => m,
                            };
                            *count.entry(outcome).or_default() += 1;
                        }
                    }
                    (done, counts)
                })
            })
            .collect();
        plans
            .iter()
            .zip(handles)
            .map(|(plan, h)| {
                let (done, steps) = h.join().unwrap_or_default();
                BranchOutcome {
                    branch: plan.name.clone(),
                    iterations: done,
                    steps,
                }
            })
            .collect()
    })
}

/// The error for a step a branch cannot run.
pub fn not_in_a_branch(op: &str) -> Failure {
    Failure::agent(format!(
        "`{op}` cannot run in a concurrent branch (branches run {})",
        msi_protocol::Branch::OPS.join(", ")
    ))
}
