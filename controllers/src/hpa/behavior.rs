//! `behavior`: stabilization windows over past recommendations and rate policies over past
//! scale events, then min/max.

use super::*;

/// `stabilizeRecommendationWithBehaviors`: the recommendation after the stabilization
/// windows, and whether a scale-down was held back by them.
pub(super) fn stabilize(
    mem: &mut Memory,
    now: jiff::Timestamp,
    desired: i32,
    current: i32,
    up: &HPAScalingRules,
    down: &HPAScalingRules,
) -> (i32, bool) {
    let window = |r: &HPAScalingRules| {
        jiff::SignedDuration::from_secs(i64::from(r.stabilization_window_seconds.unwrap_or(0)))
    };
    let (up_window, down_window) = (window(up), window(down));
    let longest = up_window.max(down_window);
    mem.recommendations.retain(|(t, _)| *t + longest >= now);
    let mut up_rec = desired;
    let mut down_rec = desired;
    for (t, r) in &mem.recommendations {
        if *t + up_window >= now {
            up_rec = up_rec.min(*r);
        }
        if *t + down_window >= now {
            down_rec = down_rec.max(*r);
        }
    }
    mem.recommendations.push((now, desired));
    let mut recommendation = current;
    if recommendation < up_rec {
        recommendation = up_rec;
    }
    if recommendation > down_rec {
        recommendation = down_rec;
    }
    (
        recommendation,
        desired < current && recommendation > desired,
    )
}

/// `convertDesiredReplicasWithBehaviorRate`: clamps to the rate policies and min/max; the
/// `ScalingLimited` reason and message when something clamped.
#[expect(clippy::too_many_arguments, reason = "the upstream function's inputs")]
pub(super) fn limit(
    mem: &mut Memory,
    now: jiff::Timestamp,
    desired: i32,
    current: i32,
    min: i32,
    max: i32,
    up: &HPAScalingRules,
    down: &HPAScalingRules,
) -> (i32, Option<(&'static str, &'static str)>) {
    let longest = |r: &HPAScalingRules| {
        r.policies
            .iter()
            .flatten()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    };
    let keep_for = jiff::SignedDuration::from_secs(i64::from(longest(up).max(longest(down))));
    mem.ups.retain(|(t, _)| *t + keep_for >= now);
    mem.downs.retain(|(t, _)| *t + keep_for >= now);
    let changed_within = |events: &[(jiff::Timestamp, i32)], period: i32| -> i32 {
        let p = jiff::SignedDuration::from_secs(i64::from(period));
        events
            .iter()
            .filter(|(t, _)| *t + p > now)
            .map(|(_, n)| n)
            .sum()
    };
    if desired > current {
        let limit = match up.select_policy.as_deref() {
            Some("Disabled") => current,
            select => {
                let proposals = up.policies.iter().flatten().map(|p| {
                    // Replicas at the period's start: what was added since taken off, what
                    // was removed since put back (upstream, since 1.27).
                    let start = current - changed_within(&mem.ups, p.period_seconds)
                        + changed_within(&mem.downs, p.period_seconds);
                    if p.type_ == "Pods" {
                        start + p.value
                    } else {
                        (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
                    }
                });
                if select == Some("Min") {
                    proposals.min().unwrap_or(i32::MAX)
                } else {
                    proposals.max().unwrap_or(i32::MAX)
                }
            }
        };
        let (allowed, reason) = if limit < max {
            (
                limit,
                (
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                ),
            )
        } else {
            (
                max,
                (
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                ),
            )
        };
        if desired > allowed {
            return (allowed, Some(reason));
        }
    } else if desired < current {
        let limit = match down.select_policy.as_deref() {
            Some("Disabled") => current,
            select => {
                let proposals = down.policies.iter().flatten().map(|p| {
                    let start = current + changed_within(&mem.downs, p.period_seconds)
                        - changed_within(&mem.ups, p.period_seconds);
                    if p.type_ == "Pods" {
                        start - p.value
                    } else {
                        (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32
                    }
                });
                if select == Some("Min") {
                    proposals.max().unwrap_or(i32::MIN)
                } else {
                    proposals.min().unwrap_or(i32::MIN)
                }
            }
        };
        let (allowed, reason) = if limit > min {
            (
                limit,
                (
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                ),
            )
        } else {
            (
                min,
                (
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                ),
            )
        };
        if desired < allowed {
            return (allowed, Some(reason));
        }
    }
    if desired > max {
        return (
            max,
            Some((
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )),
        );
    }
    if desired < min {
        return (
            min,
            Some((
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )),
        );
    }
    (desired, None)
}
