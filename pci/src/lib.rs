//! PCI type-0 configuration space, BARs, the capability list and MSI-X vector state.
//!
//! The crate knows nothing of what the function does: its user declares the identity, the BARs
//! and the capabilities, then forwards configuration accesses and MSI-X table/PBA accesses here.

mod bar;
mod config_space;
mod error;
mod msix_capability;
mod msix_vectors;

pub use bar::{Bar, BarWidth};
pub use config_space::{ConfigSpace, PciIdentity, CONFIG_SPACE_SIZE};
pub use error::PciError;
pub use msix_capability::{MsixLayout, MSIX_CAPABILITY_ID};
pub use msix_vectors::MsixVectors;
