//! kernel stage: source → patch series → config fragments → arm64 Image + uapi headers (issue 3).
