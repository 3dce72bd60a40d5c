//! kernel stage: source → patch series → config fragments → arm64 Image + uapi headers (issue 3).
pub mod apply;
pub mod patch;
pub mod variants;
