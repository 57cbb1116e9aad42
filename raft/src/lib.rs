//! The replicated state machine of `om`.
//!
//! Everything that changes the cluster is a [`Command`], appended to the Raft log and applied
//! in log order on every node by the pure function [`apply`]. This crate knows nothing of
//! sockets, files or clocks: the daemon and the simulator plug network, storage and time into
//! it through openraft's traits, so both run the same state machine code.

pub mod apply;
pub mod backup;
pub mod command;
pub mod event;
pub mod machine;
pub mod membership;
pub mod node;
mod restart;
pub mod rpc;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod types;

pub use apply::apply;
pub use apply::CommandError;
pub use apply::Outcome;
pub use command::Command;
pub use event::Event;
pub use event::EventRecord;
pub use event::Subject;
pub use machine::MachineData;
pub use machine::SharedMachine;
pub use node::Node;
pub use node::ProposeError;
pub use runtime::OmRuntime;
pub use state::ClusterState;
pub use types::node_id;
pub use types::Member;
pub use types::NodeId;
pub use types::Reply;
pub use types::TypeConfig;
