//! Drives the C-ABI shims that `export_detector!` produces exactly as a host
//! would: through the descriptor's function pointers, with raw views.

use detector_sdk::api::{
    AlertView, DetectorDescriptor, ErrorBuf, EventBatch, EventView, HostContext, StrView,
    ABI_MAJOR, ABI_MINOR, STATUS_ERROR, STATUS_OK,
};
use detector_sdk::testing::EventData;
use detector_sdk::{Alert, Alerts, Batch, Detector, Severity};
use std::ffi::c_void;

/// Alerts on failures; `{"fail": true}` config refuses; kind "boom" panics,
/// kind "err" returns an error.
struct Probe {
    min_len: usize,
}

impl Detector for Probe {
    fn new(config_json: &str) -> detector_sdk::Result<Self> {
        if config_json.contains("\"fail\"") {
            return Err("config says fail: héllo wörld".into());
        }
        if config_json.contains("\"panic\"") {
            panic!("panic in new");
        }
        Ok(Probe { min_len: 0 })
    }

    fn process(&mut self, batch: &Batch<'_>, out: &mut Alerts<'_>) -> detector_sdk::Result {
        for ev in batch {
            match ev.kind() {
                "boom" => panic!("boom at event {}", ev.id()),
                "err" => return Err(format!("cannot handle event {}", ev.id()).into()),
                _ => {}
            }
            if ev.is_failure() && ev.kind().len() >= self.min_len {
                out.emit(&Alert {
                    rule: "probe",
                    severity: Severity::Medium,
                    subject: ev.subject(),
                    client_ip: ev.client_ip(),
                    summary: "failure seen",
                    group_key: ev.client_ip().unwrap_or("-"),
                    evidence: &[ev.id()],
                })?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_us: i64, out: &mut Alerts<'_>) -> detector_sdk::Result {
        if now_us < 0 {
            panic!("negative time");
        }
        out.emit(&Alert {
            rule: "tick",
            severity: Severity::Low,
            subject: None,
            client_ip: None,
            summary: "tick",
            group_key: "t",
            evidence: &[],
        })?;
        Ok(())
    }
}

detector_sdk::export_detector!(Probe, "probe", "1.2.3", "test probe");

#[derive(Debug, PartialEq)]
struct Seen {
    rule: String,
    severity: u32,
    subject: Option<String>,
    client_ip: Option<String>,
    evidence: Vec<i64>,
}

unsafe fn s(v: StrView) -> Option<String> {
    unsafe { v.as_bytes() }.map(|b| String::from_utf8(b.to_vec()).unwrap())
}

unsafe extern "C" fn collect(ctx: *const HostContext, alert: *const AlertView) -> i32 {
    unsafe {
        let seen = &mut *((*ctx).host as *mut Vec<Seen>);
        let a = &*alert;
        assert!(a.struct_size >= std::mem::size_of::<AlertView>());
        seen.push(Seen {
            rule: s(a.rule).unwrap(),
            severity: a.severity,
            subject: s(a.subject),
            client_ip: s(a.client_ip),
            evidence: std::slice::from_raw_parts(a.evidence, a.evidence_len).to_vec(),
        });
    }
    STATUS_OK
}

fn desc() -> &'static DetectorDescriptor {
    unsafe { &*tokenwatch_detector_v1() }
}

fn create(config: &str) -> Result<*mut c_void, String> {
    let mut buf = [0u8; 256];
    let mut err = ErrorBuf {
        ptr: buf.as_mut_ptr(),
        cap: buf.len(),
        len: 0,
    };
    let mut state = std::ptr::null_mut();
    let rc = unsafe { (desc().create.unwrap())(StrView::new(config), &mut state, &mut err) };
    if rc == STATUS_OK {
        Ok(state)
    } else {
        Err(String::from_utf8(buf[..err.len].to_vec()).unwrap())
    }
}

fn last_error(state: *mut c_void) -> String {
    unsafe { s((desc().last_error.unwrap())(state)).unwrap() }
}

fn process(
    state: *mut c_void,
    events: &[EventData],
    stride_pad: usize,
    seen: &mut Vec<Seen>,
) -> i32 {
    // Lay the views out with extra padding per event, as a newer host with
    // appended EventView fields would.
    let stride = std::mem::size_of::<EventView>() + stride_pad;
    let words = stride / 8;
    let mut storage = vec![0u64; words * events.len().max(1)];
    for (i, e) in events.iter().enumerate() {
        unsafe {
            storage
                .as_mut_ptr()
                .add(i * words)
                .cast::<EventView>()
                .write(e.view())
        };
    }
    let batch = EventBatch {
        events: storage.as_ptr().cast(),
        len: events.len(),
        event_size: stride,
    };
    let ctx = HostContext {
        struct_size: std::mem::size_of::<HostContext>(),
        host: (seen as *mut Vec<Seen>).cast(),
        emit_alert: Some(collect),
    };
    unsafe { (desc().process.unwrap())(state, &batch, &ctx) }
}

fn ev(id: i64, kind: &str, outcome: &str) -> EventData {
    EventData {
        id,
        kind: kind.into(),
        outcome: outcome.into(),
        client_ip: Some("10.0.0.1".into()),
        subject: if id % 2 == 0 {
            Some("alice".into())
        } else {
            None
        },
        source: "test".into(),
        ..EventData::default()
    }
}

#[test]
fn descriptor_describes_the_plugin() {
    let d = desc();
    assert_eq!((d.abi_major, d.abi_minor), (ABI_MAJOR, ABI_MINOR));
    assert_eq!(d.struct_size, std::mem::size_of::<DetectorDescriptor>());
    unsafe {
        assert_eq!(s(d.name).as_deref(), Some("probe"));
        assert_eq!(s(d.version).as_deref(), Some("1.2.3"));
        assert_eq!(s(d.description).as_deref(), Some("test probe"));
    }
}

#[test]
fn alerts_reach_the_host_callback_with_every_field() {
    let state = create("{}").unwrap();
    let mut seen = Vec::new();
    let events = [
        ev(1, "auth.login.failure", "failure"),
        ev(2, "auth.login.success", "success"),
        ev(4, "token.rejected", "failure"),
    ];
    assert_eq!(process(state, &events, 0, &mut seen), STATUS_OK);
    assert_eq!(
        seen,
        vec![
            Seen {
                rule: "probe".into(),
                severity: 2,
                subject: None,
                client_ip: Some("10.0.0.1".into()),
                evidence: vec![1]
            },
            Seen {
                rule: "probe".into(),
                severity: 2,
                subject: Some("alice".into()),
                client_ip: Some("10.0.0.1".into()),
                evidence: vec![4]
            },
        ]
    );
    unsafe { (desc().destroy.unwrap())(state) };
}

#[test]
fn a_wider_event_stride_from_a_newer_host_is_honoured() {
    let state = create("{}").unwrap();
    let mut seen = Vec::new();
    let events: Vec<_> = (0..5).map(|i| ev(i, "x", "failure")).collect();
    assert_eq!(process(state, &events, 64, &mut seen), STATUS_OK);
    assert_eq!(
        seen.iter().map(|s| s.evidence[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    unsafe { (desc().destroy.unwrap())(state) };
}

#[test]
fn create_errors_and_panics_fill_the_error_buffer() {
    assert_eq!(
        create(r#"{"fail": true}"#).unwrap_err(),
        "config says fail: héllo wörld"
    );
    assert_eq!(
        create(r#"{"panic": true}"#).unwrap_err(),
        "detector panicked: panic in new"
    );

    // A buffer too small is filled up to a char boundary, never past cap.
    let mut buf = [0xAAu8; 20];
    let mut err = ErrorBuf {
        ptr: buf.as_mut_ptr(),
        cap: 19,
        len: 0,
    };
    let mut state = std::ptr::null_mut();
    let rc = unsafe {
        (desc().create.unwrap())(StrView::from_static(r#"{"fail":1}"#), &mut state, &mut err)
    };
    assert_eq!(rc, STATUS_ERROR);
    assert_eq!(
        std::str::from_utf8(&buf[..err.len]).unwrap(),
        "config says fail: h"
    );
    assert_eq!(buf[19], 0xAA);

    // Invalid UTF-8 config and NULL out-pointer are refused, not crashed on.
    let bad = [0xffu8, 0xfe];
    let rc = unsafe {
        (desc().create.unwrap())(
            StrView {
                ptr: bad.as_ptr(),
                len: 2,
            },
            &mut state,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, STATUS_ERROR);
    let rc = unsafe {
        (desc().create.unwrap())(StrView::NONE, std::ptr::null_mut(), std::ptr::null_mut())
    };
    assert_eq!(rc, STATUS_ERROR);
}

#[test]
fn panics_and_errors_become_error_returns_and_the_state_stays_usable() {
    let state = create("{}").unwrap();
    let mut seen = Vec::new();
    assert_eq!(
        process(state, &[ev(9, "boom", "failure")], 0, &mut seen),
        STATUS_ERROR
    );
    assert_eq!(last_error(state), "detector panicked: boom at event 9");
    assert_eq!(
        process(state, &[ev(10, "err", "failure")], 0, &mut seen),
        STATUS_ERROR
    );
    assert_eq!(last_error(state), "cannot handle event 10");
    assert_eq!(
        process(state, &[ev(11, "fine", "failure")], 0, &mut seen),
        STATUS_OK
    );
    assert_eq!(seen.len(), 1);

    let ctx = HostContext {
        struct_size: std::mem::size_of::<HostContext>(),
        host: (&mut seen as *mut Vec<Seen>).cast(),
        emit_alert: Some(collect),
    };
    assert_eq!(
        unsafe { (desc().tick.unwrap())(state, -1, &ctx) },
        STATUS_ERROR
    );
    assert_eq!(last_error(state), "detector panicked: negative time");
    assert_eq!(unsafe { (desc().tick.unwrap())(state, 5, &ctx) }, STATUS_OK);
    assert_eq!(seen.last().unwrap().rule, "tick");
    unsafe { (desc().destroy.unwrap())(state) };
}

#[test]
fn null_and_malformed_arguments_are_refused() {
    let state = create("{}").unwrap();
    let d = desc();
    let mut seen: Vec<Seen> = Vec::new();
    let ctx = HostContext {
        struct_size: std::mem::size_of::<HostContext>(),
        host: (&mut seen as *mut Vec<Seen>).cast(),
        emit_alert: Some(collect),
    };
    let empty = EventBatch {
        events: std::ptr::null(),
        len: 0,
        event_size: 0,
    };
    unsafe {
        assert_eq!(
            (d.process.unwrap())(std::ptr::null_mut(), &empty, &ctx),
            STATUS_ERROR
        );
        assert_eq!(
            s((d.last_error.unwrap())(std::ptr::null_mut())).unwrap(),
            "state is NULL"
        );
        assert_eq!(
            (d.process.unwrap())(state, std::ptr::null(), &ctx),
            STATUS_ERROR
        );
        assert_eq!(last_error(state), "batch is NULL");
        assert_eq!(
            (d.process.unwrap())(state, &empty, std::ptr::null()),
            STATUS_ERROR
        );
        assert_eq!(last_error(state), "host context is NULL");
        let no_cb = HostContext {
            emit_alert: None,
            ..ctx
        };
        assert_eq!((d.process.unwrap())(state, &empty, &no_cb), STATUS_ERROR);
        let views = [ev(1, "x", "failure").view()];
        let short = EventBatch {
            events: views.as_ptr(),
            len: 1,
            event_size: 16,
        };
        assert_eq!((d.process.unwrap())(state, &short, &ctx), STATUS_ERROR);
        assert_eq!(last_error(state), "batch event_size 16 is invalid");
        let nullev = EventBatch {
            events: std::ptr::null(),
            len: 3,
            event_size: std::mem::size_of::<EventView>(),
        };
        assert_eq!((d.process.unwrap())(state, &nullev, &ctx), STATUS_ERROR);
        assert_eq!((d.process.unwrap())(state, &empty, &ctx), STATUS_OK);
        (d.destroy.unwrap())(state);
        (d.destroy.unwrap())(std::ptr::null_mut());
    }
    assert!(seen.is_empty());
}

#[test]
fn testing_helpers_run_a_detector_without_ffi() {
    let mut d = Probe::new("{}").unwrap();
    let alerts =
        detector_sdk::testing::run_batch(&mut d, &[ev(3, "a", "failure"), ev(5, "b", "success")])
            .unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].evidence, vec![3]);
    assert_eq!(alerts[0].severity, Severity::Medium);
    let err = detector_sdk::testing::run_batch(&mut d, &[ev(6, "err", "failure")]).unwrap_err();
    assert_eq!(err.to_string(), "cannot handle event 6");
    assert_eq!(detector_sdk::testing::run_tick(&mut d, 1).unwrap().len(), 1);
}
