//! A driver's view of our configuration space: `pci-driver` parses a snapshot of it.

use std::sync::Arc;

use pci::{Bar, BarWidth, ConfigSpace, MsixLayout, MsixVectors, PciIdentity, CONFIG_SPACE_SIZE};
use pci_driver::config::caps::{Capability, MsiXCapability, VendorSpecificCapability};
use pci_driver::config::PciConfig;
use pci_driver::regions::{BackedByPciSubregion, PciMemoryRegion, PciRegion};

#[test]
fn driver_walks_the_capability_list_and_finds_msix() {
    let mut config = ConfigSpace::new(PciIdentity {
        vendor_id: 0x1af4,
        device_id: 0x1048,
        revision: 1,
        class_code: 0x010000,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x0008,
    });
    config
        .set_bar(
            1,
            Bar {
                width: BarWidth::Bits32,
                prefetchable: false,
                size: 0x2000,
            },
        )
        .unwrap();
    config
        .set_bar(
            4,
            Bar {
                width: BarWidth::Bits64,
                prefetchable: true,
                size: 0x4000,
            },
        )
        .unwrap();
    config.add_capability(0x09, &[6, 1, 2, 3], &[0; 4]).unwrap();
    let vectors = Arc::new(MsixVectors::new(5).unwrap());
    let layout = MsixLayout {
        table_bar: 1,
        table_offset: 0,
        pba_bar: 1,
        pba_offset: 0x1000,
    };
    let msix_offset = config.add_msix(vectors, layout).unwrap();

    let mut snapshot = vec![0u8; CONFIG_SPACE_SIZE as usize];
    config.read(0, &mut snapshot).unwrap();
    let region = PciMemoryRegion::new(&snapshot);
    let parsed = PciConfig::backed_by(&region);

    assert_eq!(parsed.vendor_id().read().unwrap(), 0x1af4);
    assert_eq!(parsed.device_id().read().unwrap(), 0x1048);
    assert_eq!(parsed.revision_id().read().unwrap(), 1);
    // pci-driver 0.1.4 names the class-code bytes in reverse order, so read the register whole.
    assert_eq!(parsed.read_le_u32(0x08).unwrap() >> 8, 0x010000);
    assert_eq!(parsed.subsystem_vendor_id().read().unwrap(), 0x1af4);
    assert_eq!(parsed.subsystem_id().read().unwrap(), 0x0008);
    assert_eq!(parsed.interrupt_pin().read().unwrap(), 0);
    assert_eq!(parsed.header_type().header_layout().read().unwrap(), 0);

    let caps = parsed.capabilities().unwrap();
    let ids: Vec<u8> = caps
        .iter()
        .map(|cap| cap.header().capability_id().read().unwrap())
        .collect();
    assert_eq!(ids, vec![0x09, 0x11]);
    let vendor = caps
        .of_type::<VendorSpecificCapability>()
        .unwrap()
        .next()
        .unwrap();
    assert_eq!(vendor.capability_length().read().unwrap(), 6);

    let msix = caps.of_type::<MsiXCapability>().unwrap().next().unwrap();
    assert_eq!(region.read_u8(u64::from(msix_offset)).unwrap(), 0x11);
    let control = msix.read_le_u16(2).unwrap();
    assert_eq!(usize::from(control & 0x7ff) + 1, 5, "table size");
    assert_eq!(control & 0xc000, 0, "disabled and unmasked at power-on");
    let table = msix.read_le_u32(4).unwrap();
    let pba = msix.read_le_u32(8).unwrap();
    assert_eq!((table & 7, table & !7), (1, 0));
    assert_eq!((pba & 7, pba & !7), (1, 0x1000));
}
