use std::net::IpAddr;

use waping_audit::{Action, Actor, AuditError, Auditor, Detail, Event, Outcome};
use waping_protocol::ErrorCode;

use super::*;

fn hub() -> (Arc<AuditHub>, waping_audit::MemoryLog) {
    let (a, log) = Auditor::memory("n1");
    (AuditHub::new(a, 60), log)
}

#[test]
fn high_rate_events_become_one_record_per_key_and_interval() {
    let (h, log) = hub();
    let ip: IpAddr = [10, 0, 0, 1].into();
    for _ in 0..1000 {
        h.note_rejection("acme", ErrorCode::RATE_LIMITED);
    }
    h.note_rejection("acme", ErrorCode::DEVICE_BUSY);
    h.note_rejection("acme", ErrorCode::INVALID_FIELD); // not a limit: not recorded
    for _ in 0..3 {
        h.note(
            Action::AuthSuccess,
            Some("acme"),
            Actor::Key { id: "key_1".into() },
            "http",
            Some(ip),
        );
    }
    assert_eq!(h.flush(5_000), 3);
    let ev = log.events();
    assert_eq!(ev.len(), 3);
    let rate = ev
        .iter()
        .find(|e| {
            e.detail
                == Some(Detail::Count {
                    count: 1000,
                    interval_s: 60,
                    scope: "workspace_rate".into(),
                })
        })
        .expect("the rate-limit aggregate");
    assert_eq!(
        (rate.action, rate.outcome, rate.workspace.as_deref()),
        (Action::RateLimitReject, Outcome::Denied, Some("acme"))
    );
    let auth = ev.iter().find(|e| e.action == Action::AuthSuccess).unwrap();
    assert_eq!((auth.outcome, auth.source), (Outcome::Success, Some(ip)));
    // Nothing new: nothing written, and the emptied keys are dropped.
    assert_eq!(h.flush(6_000), 0);
    assert_eq!(h.agg.len(), 0);
}

#[test]
fn a_count_whose_record_is_refused_waits_for_the_next_round() {
    let (h, log) = hub();
    h.note_rejection("acme", ErrorCode::RATE_LIMITED);
    log.refuse(Some(AuditError::QueueFull));
    assert_eq!(h.flush(1), 0);
    h.note_rejection("acme", ErrorCode::RATE_LIMITED);
    log.refuse(None);
    assert_eq!(h.flush(2), 1);
    assert_eq!(
        log.events()[0].detail,
        Some(Detail::Count {
            count: 2,
            interval_s: 60,
            scope: "workspace_rate".into()
        })
    );
}

#[test]
fn a_refused_single_record_is_not_lost_but_counted() {
    let (h, log) = hub();
    log.refuse(Some(AuditError::SpoolFull { bytes: 10, max: 10 }));
    assert!(matches!(
        h.gate(),
        Err(Error::Code {
            code: ErrorCode::AUDIT_UNAVAILABLE,
            ..
        })
    ));
    h.emit(Event::new(1, Actor::Anonymous, Action::AuthFailure).source([10, 0, 0, 9].into()));
    log.refuse(None);
    assert_eq!(h.flush(2), 1);
    let e = &log.events()[0];
    assert_eq!(e.action, Action::AuthFailure);
    assert_eq!(e.source, Some([10, 0, 0, 9].into()));
    assert_eq!(
        e.detail,
        Some(Detail::Count {
            count: 1,
            interval_s: 60,
            scope: "unrecorded".into()
        })
    );
}

#[test]
fn source_spraying_cannot_grow_the_aggregates_without_bound() {
    let (h, _log) = hub();
    for i in 0..(MAX_AGG_KEYS as u32 + 5000) {
        let ip: IpAddr = std::net::Ipv4Addr::from(i).into();
        h.note(Action::AuthFailure, None, Actor::Anonymous, "throttled", Some(ip));
    }
    assert!(h.agg.len() <= MAX_AGG_KEYS + 1, "{}", h.agg.len());
}

#[tokio::test]
async fn context_reaches_records_from_tasks_and_blocking_closures() {
    let (h, log) = hub();
    let ctx = Ctx {
        request_id: Some("req-1".into()),
        source: Some([192, 0, 2, 7].into()),
    };
    let h2 = h.clone();
    scope(ctx.clone(), async move {
        h2.emit(Event::new(1, Actor::Admin, Action::WorkspaceCreate));
        let c = current();
        let h3 = h2.clone();
        let ((), receipts) = tokio::task::spawn_blocking(move || {
            collect(c, || h3.emit(Event::new(2, Actor::Admin, Action::KeyCreate)))
        })
        .await
        .unwrap();
        assert_eq!(receipts.len(), 1, "the blocking closure's record is waited for");
        settle(receipts).await;
    })
    .await;
    let ev = log.events();
    assert_eq!(ev.len(), 2);
    for e in &ev {
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        assert_eq!(e.source, ctx.source);
    }
    // Outside any scope: no context, and emit does not collect.
    h.emit(Event::new(3, Actor::System, Action::RetentionSweep));
    assert_eq!(log.events()[2].request_id, None);
}

#[test]
fn numbers_are_masked_unless_the_workspace_opted_in() {
    let (h, _) = hub();
    assert_eq!(h.number("acme", "+4915112345678"), "+491********78");
    h.set_full_numbers("acme", true);
    assert_eq!(h.number("acme", "+4915112345678"), "+4915112345678");
    assert_eq!(h.number("other", "+4915112345678"), "+491********78");
}
