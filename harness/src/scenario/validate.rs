//! Cross-field rules of a scenario, on its expanded steps: names, device
//! ids, devices that exist when a step names them, expectations that fit
//! their step. Single values (machine type, SMMU stage, requirements, ops,
//! keys) are checked by their types when the file is read.

use std::collections::BTreeSet;

use super::model::{Action, DeviceSpec, HostStep, Pos, Scenario, ScenarioError};

impl Scenario {
    fn err_at(&self, pos: Pos, message: String) -> ScenarioError {
        ScenarioError {
            file: self.display_path.clone(),
            pos,
            message: format!("scenario {}: {message}", self.name),
        }
    }

    /// Cross-field rules: names, device ids, values that only make sense
    /// together. The first violation is returned.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let m = &self.machine;
        let at = |key: &str| m.pos_of(key).unwrap_or_default();
        if !is_kebab(&self.name) {
            return Err(self.err_at(
                Pos { line: 1, col: 1 },
                format!("file name `{}` must be kebab-case ([a-z0-9-])", self.name),
            ));
        }
        if m.smp == 0 || m.smp > 8 {
            return Err(self.err_at(
                at("smp"),
                format!("[machine].smp = {}: expected 1..=8", m.smp),
            ));
        }
        if m.memory_mb < 256 {
            return Err(self.err_at(
                at("memory_mb"),
                format!(
                    "[machine].memory_mb = {}: expected at least 256",
                    m.memory_mb
                ),
            ));
        }
        let mut known = BTreeSet::new();
        for (i, d) in m.devices.iter().enumerate() {
            let pos = m
                .device_positions
                .get(i)
                .copied()
                .unwrap_or_else(|| at("devices"));
            for id in d.ids() {
                check_id(&id).map_err(|e| self.err_at(pos, format!("[machine].devices: {e}")))?;
                if !known.insert(id.clone()) {
                    return Err(self.err_at(
                        pos,
                        format!("[machine].devices: device id `{id}` is used twice"),
                    ));
                }
            }
        }
        if let Some(vfio) = &m.vfio {
            for id in vfio {
                let Some(d) = m.devices.iter().find(|d| d.ids().contains(id)) else {
                    return Err(self.err_at(
                        at("vfio"),
                        format!(
                            "[machine].vfio names `{id}`, which is not in [machine].devices ({})",
                            names(&known)
                        ),
                    ));
                };
                if matches!(d, DeviceSpec::E1000e { .. }) {
                    // The SSH NIC is virtio; e1000e is a device under test and may be bound.
                }
            }
        }
        let mut plugged = known.clone();
        let mut unplugging = std::collections::BTreeSet::new();
        for step in &self.steps {
            let ctx = |msg: String| self.err_at(step.pos, format!("{}: {msg}", step.label()));
            match &step.action {
                Action::Host(HostStep::Hotplug { device }) => {
                    if matches!(device, DeviceSpec::EduPair { .. }) {
                        return Err(ctx(
                            "edu pairs cannot be hotplugged; plug single devices".into()
                        ));
                    }
                    for id in device.ids() {
                        check_id(&id).map_err(&ctx)?;
                        if !plugged.insert(id.clone()) {
                            return Err(ctx(format!("device id `{id}` already exists")));
                        }
                    }
                }
                action => {
                    for id in action.device_ids() {
                        if !plugged.contains(&id) {
                            return Err(ctx(format!(
                                "device `{id}` is not in [machine].devices nor hotplugged before this step (known: {})",
                                names(&plugged)
                            )));
                        }
                    }
                    // An unplugged id may be plugged again (a re-plug).
                    match action {
                        Action::Host(HostStep::Unplug { device, wait }) => {
                            if unplugging.contains(device) {
                                return Err(ctx(format!("`{device}` is being unplugged already")));
                            }
                            if *wait {
                                plugged.remove(device);
                            } else {
                                unplugging.insert(device.clone());
                            }
                        }
                        Action::Host(HostStep::WaitUnplugged { device }) => {
                            if !unplugging.remove(device) {
                                return Err(ctx(format!(
                                    "no unplug of `{device}` with `wait = false` before this step"
                                )));
                            }
                            plugged.remove(device);
                        }
                        _ => {}
                    }
                }
            }
            if let Some(expect) = &step.expect {
                let op = step.action.op();
                let ectx = |msg: String| {
                    self.err_at(step.expect_pos, format!("{}: expect: {msg}", step.label()))
                };
                for f in expect.all() {
                    if let Some(name) = &f.errno {
                        if msi_protocol::errno_number(name).is_none() {
                            return Err(ectx(format!(
                                "unknown errno name {name:?} (e.g. \"EOPNOTSUPP\", \"EINVAL\")"
                            )));
                        }
                        if f.ok == Some(true) {
                            return Err(ectx(
                                "`ok = true` and `errno` contradict each other".into(),
                            ));
                        }
                    }
                    const MSI: &[&str] = &["msi_config", "msix_table"];
                    let only: [(&str, bool, &[&str]); 7] = [
                        ("value", f.value.is_some(), &["option_get"]),
                        ("iova", f.iova.is_some(), &["ioas_map"]),
                        ("interrupts", f.interrupts.is_some(), &["wait_interrupts"]),
                        ("msi_address", f.msi_address.is_some(), MSI),
                        ("msi_enabled", f.msi_enabled.is_some(), MSI),
                        ("dma_completed", f.dma_completed.is_some(), &["edu_dma"]),
                        (
                            "dma_data_matches",
                            f.dma_data_matches.is_some(),
                            &["edu_dma"],
                        ),
                    ];
                    for (key, given, needs) in only {
                        if given && !needs.contains(&op) {
                            let needs = needs
                                .iter()
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(" or ");
                            return Err(ectx(format!("`{key}` applies only to {needs} steps")));
                        }
                    }
                    if matches!(step.action, Action::Host(_))
                        && (f.errno.is_some() || f.ok == Some(false))
                    {
                        return Err(ectx("host steps either work or fail the trial; only agent steps have an errno".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Device ids become QEMU `id=`s and agent object names.
fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(format!(
            "device id {id:?} must match [A-Za-z][A-Za-z0-9_.-]*"
        ));
    }
    if id == "net0" || (id.starts_with("hp") && id[2..].bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("device id `{id}` is reserved by the harness"));
    }
    Ok(())
}

fn names(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
