//! What touches the system, by driver: the iptables tools, nf_tables and rtnetlink sockets,
//! the namespace lock, procfs, the group file. The decision is in [`crate::engine`], the
//! executor in [`crate::execute`].

pub mod cni_files;
pub mod exec;
pub mod groups;
pub mod inventory;
pub mod iptables;
pub mod lock;
pub mod logfile;
pub mod netlink;
pub mod nftables;
pub mod nlsocket;
pub mod privileges;
pub mod procfs;
pub mod retry;
pub mod routing;
pub(crate) mod transaction;
pub(crate) mod xt_shells;
