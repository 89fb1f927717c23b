//! msbvm's virtual machine monitor.
