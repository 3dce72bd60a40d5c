//! SW_MSI dialects: how a kernel speaks `IOMMU_OPTION_SW_MSI_START/SIZE`.
//!
//! Respins of the series changed the uAPI without renaming it: RFCv2 sets
//! one window per iommufd context (object 0), v2 one per device (object =
//! the device id), and another RFC on the list claims option id 2 for
//! something else. So a variant declares its dialect in `kernels.toml` as
//! data, scenarios say what they mean ("set the MSI window of this
//! device") and the executor translates through the dialect. The option
//! ids a dialect names are checked against the kernel's exported headers
//! when it is built ([`super::uapi_check::check_dialect`]).

use serde::{Deserialize, Serialize};

/// One dialect, as `[dialect.NAME]` of `kernels.toml` declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialect {
    /// The table's name (`rfcv2`, `v2`): what scenario expectations say in
    /// `expect.dialect.NAME`.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Which object the options belong to.
    pub scope: Scope,
    /// The unit of the SIZE value.
    pub size_unit: SizeUnit,
    /// `IOMMU_OPTION_SW_MSI_START`'s option id.
    pub start_option: u32,
    /// `IOMMU_OPTION_SW_MSI_SIZE`'s option id.
    pub size_option: u32,
}

/// The object an `IOMMU_OPTION` of the window is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The iommufd context: `object_id = 0`.
    Context,
    /// The bound device: `object_id` = its dev id.
    Device,
}

/// How a SIZE value is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SizeUnit {
    /// Megabytes (both RFCv2, which documents it without checking it, and
    /// v2, which checks it).
    MiB,
    /// Bytes.
    #[serde(rename = "bytes")]
    Bytes,
}

impl SizeUnit {
    /// The SIZE value for a window of `mib` megabytes (what scenarios
    /// write); `None` when it does not fit in 64 bits.
    pub fn value_of_mib(self, mib: u64) -> Option<u64> {
        match self {
            SizeUnit::MiB => Some(mib),
            SizeUnit::Bytes => mib.checked_mul(1 << 20),
        }
    }
}

impl Dialect {
    /// The C names of the option ids and the values this dialect gives
    /// them, for the header check.
    pub fn option_ids(&self) -> [(&'static str, u32); 2] {
        [
            ("IOMMU_OPTION_SW_MSI_START", self.start_option),
            ("IOMMU_OPTION_SW_MSI_SIZE", self.size_option),
        ]
    }

    /// One line for logs: `v2 (per device, SIZE in MiB, ids 2/3)`.
    pub fn summary(&self) -> String {
        let scope = match self.scope {
            Scope::Context => "per iommufd context",
            Scope::Device => "per device",
        };
        let unit = match self.size_unit {
            SizeUnit::MiB => "MiB",
            SizeUnit::Bytes => "bytes",
        };
        format!(
            "{} ({scope}, SIZE in {unit}, option ids {}/{})",
            self.name, self.start_option, self.size_option
        )
    }
}
