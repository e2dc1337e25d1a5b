// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The counters as JSON: `GupCounters::to_json` parses, carries every field
//! of the struct (checked against its Debug output, so a field added to the
//! struct but not to the JSON is caught) with the same values, and every
//! fallback reason by name.

mod common;
#[path = "common/gup.rs"]
mod gupc;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use guest_mm::gup::{
    AddressSpace, Fallback, FaultOutcome, GupConfig, GupCounters, InjectIntoVcpu, RegionOptions,
};
use gupc::*;

/// The fields of `GupCounters`' Debug output: scalar name -> value, and
/// the `fallbacks` array.
fn debug_fields(c: &GupCounters) -> (BTreeMap<String, i64>, Vec<u64>) {
    let s = format!("{c:?}");
    let body = s
        .strip_prefix("GupCounters { ")
        .and_then(|s| s.strip_suffix(" }"))
        .expect("Debug layout");
    let (before, rest) = body.split_once("fallbacks: [").unwrap();
    let (array, after) = rest.split_once(']').unwrap();
    let fallbacks = array
        .split(", ")
        .map(|v| v.parse().unwrap())
        .collect::<Vec<u64>>();
    let mut scalars = BTreeMap::new();
    for field in before.split(", ").chain(after.split(", ")) {
        if field.is_empty() {
            continue;
        }
        let (k, v) = field.split_once(": ").unwrap();
        scalars.insert(k.to_owned(), v.parse().unwrap());
    }
    (scalars, fallbacks)
}

fn check_json(c: &GupCounters) -> serde_json::Value {
    let json = c.to_json();
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let obj = v.as_object().unwrap();
    let (scalars, fallbacks) = debug_fields(c);
    assert_eq!(obj.len(), scalars.len() + 1, "{json}");
    for (k, want) in &scalars {
        assert_eq!(obj[k.as_str()].as_i64(), Some(*want), "{k} in {json}");
    }
    let fb = obj["fallbacks"].as_object().unwrap();
    assert_eq!(fb.len(), Fallback::ALL.len());
    assert_eq!(fallbacks.len(), Fallback::ALL.len());
    for (i, r) in Fallback::ALL.iter().enumerate() {
        assert_eq!(fb[r.name()].as_u64(), Some(c.fallback(*r)), "{r:?}");
        assert_eq!(c.fallback(*r), fallbacks[i]);
    }
    v
}

#[test]
fn counters_print_as_json() {
    check_json(&GupCounters::default());
    let lazy = RegionOptions {
        lazy: true,
        ..RegionOptions::default()
    };
    let ro = RegionOptions {
        read_only: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (RAM0, MIB, lazy),
            (RAM0 + 2 * MIB, MIB, ro),
        ],
        GupConfig {
            freeze_wait: Duration::from_millis(1),
            ..GupConfig::default()
        },
    );
    let map = gup.memory_map();
    let mem = map.memory();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + PAGE, DATA + PAGE, 1, RW | US);
    let pte = b.map(VA + 2 * PAGE, DATA + 2 * PAGE, 1, RW | US).at(1);
    w64(mem, pte, 0);
    let handler = Recorder::new(|_, _| {
        w64(mem, pte, (DATA + 2 * PAGE) | P | RW | US | A | D);
        FaultOutcome::Retry
    });
    let ctx = ctx4(b.root);
    let phys = AddressSpace::Physical;
    let space = AddressSpace::with_handler(ctx, &handler);

    // A mix of every path, some of it held.
    let held = [
        gup.pin(&space, VA, PAGE, PIN).unwrap(),
        gup.pin(&space, VA + PAGE, PAGE, GET | WRITE | TOUCH)
            .unwrap(),
        gup.pin(&space, VA + 2 * PAGE, PAGE, PIN).unwrap(),
        gup.pin(&phys, RAM0, PAGE, PIN).unwrap(),
        gup.pin(&phys, DATA, PAGE, PIN | LONGTERM).unwrap(),
        gup.pin(&phys, RAM0 + MIB, PAGE, GET | DUMP).unwrap(),
    ];
    let (r, f) = frame_of(&map, DATA + 9 * PAGE);
    r.frames().freeze(f).unwrap();
    assert!(gup.pin(&phys, DATA + 9 * PAGE, PAGE, GET).is_err());
    r.frames().unfreeze(f);
    assert!(gup.pin(&phys, RAM0 + 2 * MIB, PAGE, GET | WRITE).is_err());
    let inject = AddressSpace::with_handler(ctx, &InjectIntoVcpu);
    assert!(gup.pin(&inject, VA + 3 * PAGE, PAGE, GET).is_err());
    assert!(gup
        .pin(&inject, VA + 3 * PAGE, PAGE, GET | NOFAULT)
        .is_err());

    let s = gup.stats();
    let v = check_json(&s);
    // The mix moved these (each value is checked against the struct above;
    // here, that the mix did reach them).
    for k in [
        "requests",
        "fast_hits",
        "fast_pages",
        "slow_calls",
        "slow_pages",
        "faults_handled",
        "faults_injected",
        "faults_failed",
        "retries",
        "touched",
        "populated",
        "frozen_waits",
        "holes",
        "pins_outstanding",
        "gets_outstanding",
        "longterm_pages",
    ] {
        assert!(v[k].as_i64().unwrap() > 0, "{k}: {v}");
    }
    for r in [
        Fallback::NotPresent,
        Fallback::AccessedDirty,
        Fallback::NotRam,
        Fallback::ReadOnly,
        Fallback::Frozen,
        Fallback::NotPopulated,
        Fallback::Longterm,
    ] {
        assert!(v["fallbacks"][r.name()].as_u64().unwrap() > 0, "{r:?}: {v}");
    }
    drop(held);
    let v = check_json(&gup.stats());
    for k in ["pins_outstanding", "gets_outstanding", "longterm_pages"] {
        assert_eq!(v[k].as_i64(), Some(0), "{k}");
    }
    assert_released(&gup);
}

#[test]
fn fallback_names_are_distinct_snake_case() {
    let names: std::collections::BTreeSet<_> = Fallback::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), Fallback::ALL.len());
    for n in names {
        assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{n}");
    }
}
