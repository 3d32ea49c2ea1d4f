//! Rendering: translations of the neutral plan into what a kernel interface takes. Only text
//! and data here; nothing is executed.

pub mod iptables_save;
pub mod iptables_text;
pub mod netlink_wire;
pub mod nft_netlink;
pub mod nft_ruleset;
pub mod nft_sets;
pub mod shadowing;
