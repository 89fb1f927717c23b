//! Architecture-specific machine set-up that does not depend on the hypervisor.

pub mod x86_64;
