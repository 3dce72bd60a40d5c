//! The nightly matrix: which kernels a CI engine builds and tests every
//! night, and how their test jobs are sharded.
//!
//! The kernels come from `kernel-configs/kernels.toml`
//! ([`KernelsFile::nightly`]), so adding a variant there adds it to the
//! matrix with no workflow edit; `cargo xtask matrix` prints this as the
//! JSON `.github/workflows/nightly.yml` reads with `fromJSON`.

use serde::Serialize;

use crate::kernel::variants::KernelsFile;

/// The matrix as the workflow reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// One build job each.
    pub kernels: Vec<String>,
    /// One test job each: every kernel × every partition.
    pub shards: Vec<Shard>,
}

/// One test job: a kernel's suite, one nextest partition of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub kernel: String,
    /// As nextest's `--partition` takes it: `count:2/3`.
    pub partition: String,
}

/// The matrix of `file`, each kernel's tests split into `partitions`.
pub fn matrix(file: &KernelsFile, partitions: u32) -> Matrix {
    let kernels = file.nightly();
    let shards = kernels
        .iter()
        .flat_map(|k| {
            (1..=partitions.max(1)).map(move |n| Shard {
                kernel: k.clone(),
                partition: format!("count:{n}/{}", partitions.max(1)),
            })
        })
        .collect();
    Matrix { kernels, shards }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_gets_every_partition_once() {
        let file = crate::kernel::variants::load_file(&crate::kernel::variants::kernels_toml(
            &crate::cache::project_root(),
        ))
        .unwrap();
        let m = matrix(&file, 3);
        assert!(!m.kernels.is_empty());
        assert_eq!(m.shards.len(), m.kernels.len() * 3);
        let first = &m.kernels[0];
        let of_first: Vec<&str> = m
            .shards
            .iter()
            .filter(|s| &s.kernel == first)
            .map(|s| s.partition.as_str())
            .collect();
        assert_eq!(of_first, ["count:1/3", "count:2/3", "count:3/3"]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["shards"][0]["partition"], "count:1/3");
        assert_eq!(json["kernels"][0], first.as_str());
    }
}
