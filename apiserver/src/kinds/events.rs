//! events.k8s.io/v1 Event: the same objects as core/v1 Event, stored once in the core form and
//! converted field by field on the way in and out (`pkg/apis/events/v1` conversion), so an
//! event written by kube-runtime's `Recorder` shows in `kubectl describe` and vice versa.

use k8s_openapi::api::events::v1::Event;
use serde_json::{Map, Value, json};

use crate::error::FieldError;
use crate::registry::{NameRule, Registry, Strategy};
use crate::table::{Column, age};

/// events.k8s.io/v1 field ⇄ core/v1 field.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: Value, api_version: &str, forward: bool) -> Value {
    let Value::Object(m) = obj else {
        return obj;
    };
    let mut out = Map::with_capacity(m.len());
    for (k, v) in m {
        let key = RENAMES
            .iter()
            .find(|(new, old)| if forward { new == &k } else { old == &k })
            .map(|(new, old)| if forward { *old } else { *new })
            .unwrap_or(k.as_str())
            .to_string();
        out.insert(key, v);
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

pub(super) fn register(r: &Registry) {
    r.register_with(EventV1Strategy, |i| {
        i.short_names(&["ev"])
            .stored_with::<k8s_openapi::api::core::v1::Event>()
    });
}

struct EventV1Strategy;

impl Strategy for EventV1Strategy {
    type K = Event;

    fn name_rule(&self) -> NameRule {
        NameRule::Path
    }

    fn validate(&self, ev: &Event) -> Vec<FieldError> {
        // `ValidateEventCreate` for events.k8s.io/v1.
        let mut errs = Vec::new();
        if ev.event_time.is_none() {
            errs.push(FieldError::required("eventTime", ""));
        }
        for (field, v) in [
            ("reportingController", &ev.reporting_controller),
            ("reportingInstance", &ev.reporting_instance),
            ("action", &ev.action),
            ("reason", &ev.reason),
        ] {
            if v.as_deref().is_none_or(str::is_empty) {
                errs.push(FieldError::required(field, ""));
            }
        }
        errs.extend(FieldError::not_one_of(
            "type",
            ev.type_.as_deref(),
            &["Normal", "Warning"],
        ));
        errs
    }

    fn to_storage(&self, obj: Value) -> Value {
        rename(obj, "v1", true)
    }

    fn view_of_stored(&self, stored: Value) -> Value {
        rename(stored, "events.k8s.io/v1", false)
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Last Seen", "Time when this Event was last observed."),
            Column::new("Type", "Type of this event (Normal, Warning)."),
            Column::new("Reason", "Why the action was taken."),
            Column::new("Object", "The object this event is about."),
            Column::new(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
        ]
    }

    fn row(&self, ev: &Event) -> Vec<Value> {
        let last = ev
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(ev.event_time.as_ref().map(|t| t.0))
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
        let regarding = ev.regarding.clone().unwrap_or_default();
        vec![
            age(last.as_ref().or(ev.metadata.creation_timestamp.as_ref())),
            json!(ev.type_.clone().unwrap_or_default()),
            json!(ev.reason.clone().unwrap_or_default()),
            json!(format!(
                "{}/{}",
                regarding.kind.unwrap_or_default().to_lowercase(),
                regarding.name.unwrap_or_default()
            )),
            json!(ev.note.clone().unwrap_or_default()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_should_convert_both_ways() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                        "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reportingController": "wasmlet",
                        "reportingInstance": "n1", "action": "Start", "reason": "Started", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = EventV1Strategy.to_storage(v1.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "wasmlet");
        assert_eq!(EventV1Strategy.view_of_stored(core), v1);
    }
}
