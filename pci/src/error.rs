//! Errors of configuration-space and MSI-X accesses and of building a function's layout.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("access of {len} bytes at {offset:#x} falls outside a {size:#x}-byte area")]
    OutOfRange { offset: u64, len: usize, size: u64 },
    #[error(
        "access of {len} bytes at {offset:#x} has a width or alignment the area does not support"
    )]
    BadAccess { offset: u64, len: usize },
    #[error("BAR index {0} does not exist or is already taken")]
    BarUnavailable(u8),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes that fits its width")]
    BarSize(u64),
    #[error("no room left in the capability list for a {0}-byte capability")]
    CapabilitySpace(usize),
    #[error("write mask is {mask} bytes for a {body}-byte capability body")]
    MaskLength { mask: usize, body: usize },
    #[error("MSI-X vector count {0} is not within 1..=2048")]
    VectorCount(u32),
    #[error("MSI-X vector {vector} does not exist (the function has {count})")]
    NoSuchVector { vector: u16, count: u16 },
    #[error("the function already has an MSI-X capability")]
    MsixTwice,
    #[error("signalling an MSI-X eventfd failed: {0}")]
    Signal(std::io::ErrorKind),
}

/// Rejects an access of `len` bytes at `offset` that does not fit in `size` bytes.
pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> Result<usize, PciError> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(end) if end <= size => Ok(offset as usize),
        _ => Err(PciError::OutOfRange { offset, len, size }),
    }
}
