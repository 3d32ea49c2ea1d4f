//! The kernel interfaces that install and read rules, each behind its own small type: the
//! iptables tools (`xtables`), nf_tables over netlink (`nf_tables`), rtnetlink
//! (`rtnetlink`, and the routing objects of ours over it in `routing`), and the netlink
//! socket they share (`nlsocket`).

pub mod nf_tables;
pub mod nlsocket;
pub mod routing;
pub mod rtnetlink;
pub mod xtables;
