//! The guest agent (issue 4).

fn main() {}
