//! The vsock device across a snapshot: a device restored from one tells the
//! guest its connections are gone (a transport reset on the event queue)
//! and then serves new ones on its own host socket.

use super::*;

#[test]
fn a_restored_device_resets_the_transport_then_serves_new_connections() {
    let (mut s, _listener, mut host) = connected(1000, 2000);
    // The guest keeps an event buffer posted, as Linux does.
    let ev = s.d.driver().alloc(8);
    s.d.driver().write_mem(ev, &[0xff; 8]);
    s.d.driver()
        .add_chain(EVQ_INDEX, &[Desc::writable(ev, 8)])
        .unwrap();
    s.d.driver().kick(EVQ_INDEX);
    assert!(
        s.d.driver()
            .wait_used(EVQ_INDEX, Duration::from_millis(100))
            .is_none(),
        "a running device sent an event"
    );

    s.d.driver().transport().pause().unwrap();
    let state = s.d.driver().transport().save_state().unwrap();
    s.d.driver().transport().resume();

    // The restored VM's device has a socket of its own.
    let restored = s._dir.as_path().join("restored.sock");
    let device = Vsock::new(CID, restored.clone()).unwrap();
    s.d.driver().restore_into(Box::new(device), &state).unwrap();
    // The source's device is gone here, and its connection with it.
    assert_closed(&mut host);
    let event =
        s.d.driver()
            .wait_used(EVQ_INDEX, TIMEOUT)
            .expect("no transport reset after the restore");
    assert_eq!(event.len, 4);
    assert_eq!(
        s.d.driver().read_mem(ev, 4),
        EVENT_TRANSPORT_RESET.to_le_bytes()
    );

    // A host client reaches the guest through the restored device.
    s.path = restored;
    let (mut stream, host_port) = host_connect(&mut s, 1234);
    stream.write_all(b"after").unwrap();
    assert_eq!(recv_data(&mut s.d, host_port, 1234, 5), b"after");
}

#[test]
fn a_device_restored_before_the_driver_was_ready_waits_for_it() {
    let dir = TempDir::new().unwrap();
    let mut d = GuestDriver::new(Box::new(
        Vsock::new(CID, dir.as_path().join("a.sock")).unwrap(),
    ));
    // Saved before DRIVER_OK: nothing runs, and the restored device is not
    // active either; the driver sets it up as usual.
    d.transport().pause().unwrap();
    let state = d.transport().save_state().unwrap();
    let device = Vsock::new(CID, dir.as_path().join("b.sock")).unwrap();
    d.restore_into(Box::new(device), &state).unwrap();
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    d.init();
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0xf);
    // Saved state with bytes the device does not expect is refused.
    let device = Vsock::new(CID, dir.as_path().join("c.sock")).unwrap();
    let mut fresh = GuestDriver::new(Box::new(device));
    let mut dev = Vsock::new(CID, dir.as_path().join("d.sock")).unwrap();
    assert!(dev.restore_state(&[1, 2, 3]).is_err());
    assert!(fresh.restore_into(Box::new(dev), &[0xde, 0xad]).is_err());
}
