//! Vital product data pages (SPC-5 7.7, SBC-4 6.6): what INQUIRY with EVPD=1 returns.

use super::lun_config::LunConfig;

/// T10 vendor and product identification: in the standard INQUIRY data and in the designators
/// of the device identification page.
pub(crate) const VENDOR: &[u8; 8] = b"VFIOUSER";
pub(crate) const PRODUCT: &[u8; 16] = b"VIRTUAL DISK    ";

pub(crate) const SUPPORTED_PAGES: u8 = 0x00;
const UNIT_SERIAL_NUMBER: u8 = 0x80;
const DEVICE_IDENTIFICATION: u8 = 0x83;
const BLOCK_LIMITS: u8 = 0xb0;
const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;
const LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;

fn with_header(peripheral: u8, page_code: u8, body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + body.len());
    data.extend_from_slice(&[peripheral, page_code]);
    // Bodies are built here with at most a few hundred bytes.
    data.extend_from_slice(&(body.len() as u16).to_be_bytes());
    data.extend_from_slice(body);
    data
}

fn supported_pages(lun: &LunConfig) -> Vec<u8> {
    let mut pages = vec![SUPPORTED_PAGES];
    if !lun.serial.is_empty() {
        pages.push(UNIT_SERIAL_NUMBER);
    }
    pages.extend_from_slice(&[
        DEVICE_IDENTIFICATION,
        BLOCK_LIMITS,
        BLOCK_DEVICE_CHARACTERISTICS,
        LOGICAL_BLOCK_PROVISIONING,
    ]);
    pages
}

/// The page list of a LUN that does not exist: qualifier 3, only page 0x00.
pub(crate) fn supported_pages_of_missing_lun() -> Vec<u8> {
    with_header(0x7f, SUPPORTED_PAGES, &[SUPPORTED_PAGES])
}

/// FNV-1a: a stable hash, so that a LUN keeps its NAA identifier across server restarts.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// NAA locally assigned (type 3) identifier derived from the serial and the LUN number.
fn naa_locally_assigned(lun: &LunConfig) -> [u8; 8] {
    let hash = fnv1a(
        VENDOR
            .iter()
            .chain(lun.serial.as_bytes())
            .chain(&lun.lun.to_be_bytes())
            .copied(),
    );
    ((3u64 << 60) | (hash >> 4)).to_be_bytes()
}

fn designator(code_set: u8, designator_type: u8, value: &[u8]) -> Vec<u8> {
    let mut descriptor = vec![code_set, designator_type, 0, value.len() as u8];
    descriptor.extend_from_slice(value);
    descriptor
}

/// Designators for the logical unit: T10 vendor ID based (vendor, then the serial, or product
/// and LUN without one), and, with a serial, an NAA identifier that multipath and udev can use.
fn device_identification(lun: &LunConfig) -> Vec<u8> {
    const BINARY: u8 = 0x1;
    const ASCII: u8 = 0x2;
    const T10_VENDOR_ID: u8 = 0x1;
    const NAA: u8 = 0x3;
    let mut t10 = VENDOR.to_vec();
    if lun.serial.is_empty() {
        t10.extend_from_slice(PRODUCT.trim_ascii_end());
        t10.extend_from_slice(format!(" lun {}", lun.lun).as_bytes());
    } else {
        t10.extend_from_slice(lun.serial.as_bytes());
    }
    let mut body = designator(ASCII, T10_VENDOR_ID, &t10);
    if !lun.serial.is_empty() {
        body.extend(designator(BINARY, NAA, &naa_locally_assigned(lun)));
    }
    body
}

fn block_limits(lun: &LunConfig) -> Vec<u8> {
    let mut body = vec![0u8; 0x3c];
    body[0] = 0x01; // WSNZ: WRITE SAME with no block count is refused
    body[4..8].copy_from_slice(&lun.max_transfer_blocks.to_be_bytes());
    body[8..12].copy_from_slice(&lun.optimal_transfer_blocks.to_be_bytes());
    if lun.discard {
        body[16..20].copy_from_slice(&lun.max_unmap_blocks().to_be_bytes());
        body[20..24].copy_from_slice(&super::unmap::MAX_DESCRIPTORS.to_be_bytes());
    }
    body[32..40].copy_from_slice(&u64::from(lun.max_write_same_blocks()).to_be_bytes());
    body
}

fn block_device_characteristics(lun: &LunConfig) -> Vec<u8> {
    let mut body = vec![0u8; 0x3c];
    if !lun.rotational {
        body[1] = 0x01; // medium rotation rate 1: non-rotating
    }
    body
}

fn logical_block_provisioning(lun: &LunConfig) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    if lun.discard {
        body[1] = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
        if lun.write_zeroes {
            body[1] |= 0x04; // LBPRZ: unmapped blocks read as zeros
        }
        body[2] = 0x02; // thin provisioned
    }
    body
}

/// The VPD page `page_code` of an existing LUN, or `None` when we have no such page.
pub(crate) fn page(page_code: u8, lun: &LunConfig) -> Option<Vec<u8>> {
    let body = match page_code {
        SUPPORTED_PAGES => supported_pages(lun),
        UNIT_SERIAL_NUMBER if !lun.serial.is_empty() => lun.serial.as_bytes().to_vec(),
        DEVICE_IDENTIFICATION => device_identification(lun),
        BLOCK_LIMITS => block_limits(lun),
        BLOCK_DEVICE_CHARACTERISTICS => block_device_characteristics(lun),
        LOGICAL_BLOCK_PROVISIONING => logical_block_provisioning(lun),
        _ => return None,
    };
    Some(with_header(0x00, page_code, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;

    fn be32(data: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn supported_pages_lists_every_page_we_answer() {
        let lun = config(0);
        let list = page(SUPPORTED_PAGES, &lun).unwrap();
        assert_eq!(&list[..4], &[0, 0, 0, 6]);
        assert_eq!(&list[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
        for code in 0..=255u8 {
            assert_eq!(
                page(code, &lun).is_some(),
                list[4..].contains(&code),
                "page {code:#x}"
            );
        }
        let no_serial = LunConfig {
            serial: String::new(),
            ..config(0)
        };
        let list = page(SUPPORTED_PAGES, &no_serial).unwrap();
        assert_eq!(&list[4..], &[0x00, 0x83, 0xb0, 0xb1, 0xb2]);
        assert!(page(UNIT_SERIAL_NUMBER, &no_serial).is_none());
    }

    #[test]
    fn serial_number_page() {
        assert_eq!(
            page(0x80, &config(0)).unwrap(),
            b"\0\x80\0\x07SERIAL0".to_vec()
        );
    }

    #[test]
    fn device_identification_is_stable_and_unique_per_serial_and_lun() {
        let data = page(0x83, &config(1)).unwrap();
        assert_eq!(&data[..2], &[0, 0x83]);
        assert_eq!(
            usize::from(u16::from_be_bytes([data[2], data[3]])),
            data.len() - 4
        );
        // T10 vendor ID designator: ASCII, vendor then serial.
        assert_eq!(&data[4..8], &[0x02, 0x01, 0, 15]);
        assert_eq!(&data[8..23], b"VFIOUSERSERIAL1");
        // NAA designator: binary, 8 bytes, NAA 3.
        assert_eq!(&data[23..27], &[0x01, 0x03, 0, 8]);
        assert_eq!(data[27] >> 4, 3);
        assert_eq!(data.len(), 35);
        assert_eq!(page(0x83, &config(1)).unwrap(), data, "stable");
        let other_lun = LunConfig {
            lun: 2,
            ..config(1)
        };
        assert_ne!(page(0x83, &other_lun).unwrap()[27..35], data[27..35]);
        let other_serial = LunConfig {
            serial: "X".into(),
            ..config(1)
        };
        assert_ne!(page(0x83, &other_serial).unwrap()[24..], data[27..35]);

        let anonymous = LunConfig {
            serial: String::new(),
            ..config(3)
        };
        let data = page(0x83, &anonymous).unwrap();
        assert_eq!(&data[8..], b"VFIOUSERVIRTUAL DISK lun 3");
    }

    #[test]
    fn block_limits_page() {
        let lun = config(0);
        let data = page(0xb0, &lun).unwrap();
        assert_eq!(data.len(), 64);
        assert_eq!(&data[..4], &[0, 0xb0, 0, 0x3c]);
        assert_eq!(data[4], 0x01, "WSNZ");
        assert_eq!(be32(&data, 8), lun.max_transfer_blocks);
        assert_eq!(be32(&data, 12), lun.optimal_transfer_blocks);
        assert_eq!(be32(&data, 20), lun.max_unmap_blocks());
        assert_eq!(be32(&data, 24), crate::unmap::MAX_DESCRIPTORS);
        assert_eq!(
            u64::from_be_bytes(data[36..44].try_into().unwrap()),
            2 * 1024 * 1024
        );
        let no_discard = LunConfig {
            discard: false,
            ..config(0)
        };
        let data = page(0xb0, &no_discard).unwrap();
        assert_eq!(be32(&data, 20), 0);
        assert_eq!(be32(&data, 24), 0);
    }

    #[test]
    fn block_device_characteristics_page() {
        let data = page(0xb1, &config(0)).unwrap();
        assert_eq!(&data[..6], &[0, 0xb1, 0, 0x3c, 0, 1]);
        let rotational = LunConfig {
            rotational: true,
            ..config(0)
        };
        assert_eq!(&page(0xb1, &rotational).unwrap()[4..6], &[0, 0]);
    }

    #[test]
    fn logical_block_provisioning_page() {
        assert_eq!(
            page(0xb2, &config(0)).unwrap(),
            vec![0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]
        );
        let no_zeroes = LunConfig {
            write_zeroes: false,
            ..config(0)
        };
        assert_eq!(page(0xb2, &no_zeroes).unwrap()[5], 0xe0);
        let no_discard = LunConfig {
            discard: false,
            ..config(0)
        };
        assert_eq!(
            page(0xb2, &no_discard).unwrap(),
            vec![0, 0xb2, 0, 4, 0, 0, 0, 0]
        );
    }
}
