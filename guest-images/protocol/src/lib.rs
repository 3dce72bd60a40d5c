//! Steps and results exchanged between the harness and the guest agent.
