//! The rig file's checks that serde cannot express: ranges, combinations, and (at session
//! start) the dimensions against the model. Every error names the key and the file.

use super::*;

impl Rig {
    /// Range checks that serde cannot express. Dimension checks against the model happen
    /// when the session starts ([`Rig::check_against_model`]).
    pub fn validate(&self) -> Result<(), RigError> {
        let t = &self.timing;
        if !(t.bin_ms.is_finite() && t.bin_ms >= 0.1 && t.bin_ms <= 1000.0) {
            return Err(self.invalid("timing.bin_ms", format!("must be between 0.1 and 1000 ms, got {}", t.bin_ms)));
        }
        if !(t.grace_ms.is_finite() && t.grace_ms >= 0.0 && t.grace_ms <= 10.0 * t.bin_ms) {
            return Err(self.invalid("timing.grace_ms", format!("must be between 0 and 10 bins, got {}", t.grace_ms)));
        }
        if !(t.deadline_ms.is_finite() && t.deadline_ms > 0.0 && t.deadline_ms < t.bin_ms) {
            return Err(
                self.invalid("timing.deadline_ms", format!("must be > 0 and < timing.bin_ms ({}), got {}", t.bin_ms, t.deadline_ms))
            );
        }
        if !(t.start_delay_ms.is_finite() && t.start_delay_ms >= 0.0) {
            return Err(self.invalid("timing.start_delay_ms", "must be ≥ 0"));
        }
        // Its messages name the key as the file has it ("[realtime] cpus = …").
        self.realtime.validate().map_err(|message| RigError::Parse { path: self.path.clone(), message })?;
        let c = &self.control;
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(
                self.invalid("control.listen", format!("must be an address and port such as \"127.0.0.1:7878\", got \"{}\"", c.listen))
            );
        }
        if !(c.max_commands_per_s.is_finite() && c.max_commands_per_s >= 0.1 && c.max_commands_per_s <= 10_000.0) {
            return Err(self.invalid("control.max_commands_per_s", format!("must be between 0.1 and 10000, got {}", c.max_commands_per_s)));
        }
        let markers = c.markers_name_or_default(&self.name);
        if markers.trim().is_empty() || markers.contains(['\'', '"']) {
            return Err(self.invalid("control.markers_name", format!("must be a non-empty stream name without quotes, got {markers:?}")));
        }
        let i = &self.input;
        if !(i.resolve_timeout_s.is_finite() && i.resolve_timeout_s > 0.0) {
            return Err(self.invalid("input.resolve_timeout_s", "must be > 0"));
        }
        if !(i.stall_ms.is_finite() && i.stall_ms > 0.0) {
            return Err(self.invalid("input.stall_ms", "must be > 0"));
        }
        if !(16..=crate::MAX_RING_CAPACITY).contains(&i.ring_capacity) {
            return Err(self
                .invalid("input.ring_capacity", format!("must be in 16..={} spikes, got {}", crate::MAX_RING_CAPACITY, i.ring_capacity)));
        }
        let u = &self.units;
        match [u.channels.is_some(), u.map.is_some(), u.labels.is_some()].iter().filter(|b| **b).count() {
            0 => return Err(self.invalid("units", "needs `channels`, `map` or `labels`")),
            1 => {}
            _ => return Err(self.invalid("units", "give one of `channels`, `map` and `labels`, not several")),
        }
        match (&u.channels, &u.map) {
            (Some(0), _) => return Err(self.invalid("units.channels", "must be ≥ 1")),
            (_, Some(m)) if m.is_empty() => return Err(self.invalid("units.map", "must not be empty")),
            _ => {}
        }
        if u.merge_sorted && u.channels.is_none() {
            return Err(self.invalid("units.merge_sorted", "applies only with `channels` (sorted units of channel c ↦ model unit c)"));
        }
        if let Some(labels) = &u.labels {
            if self.input.kind != InputKind::Counts {
                return Err(self.invalid(
                    "units.labels",
                    "maps the channels of a counts stream by label; a spike-event stream's channels are (channel, unit), so use [units] channels or map",
                ));
            }
            if labels.is_empty() || labels.len() > crate::MAX_UNITS {
                return Err(self
                    .invalid("units.labels", format!("has {} labels; give 1..={} (one per model unit)", labels.len(), crate::MAX_UNITS)));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, l) in labels.iter().enumerate() {
                if l.trim().is_empty() {
                    return Err(self.invalid("units.labels", format!("entry {i} is empty")));
                }
                if l.trim() != l {
                    return Err(self
                        .invalid("units.labels", format!("entry {i} '{l}' has leading or trailing spaces (labels are matched exactly)")));
                }
                if !seen.insert(l.as_str()) {
                    return Err(self.invalid("units.labels", format!("entry {i} '{l}' appears twice")));
                }
            }
        }
        if let Some(ch) = self.units.channels {
            if ch > crate::MAX_UNITS {
                return Err(self.invalid("units.channels", format!("must be in 1..={}, got {ch}", crate::MAX_UNITS)));
            }
        }
        if let Some(map) = &self.units.map {
            if map.len() > crate::MAX_UNITS {
                return Err(self.invalid("units.map", format!("has {} entries; at most {} model units", map.len(), crate::MAX_UNITS)));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, pair) in map.iter().enumerate() {
                if pair[0] as usize >= crate::MAX_UNITS {
                    return Err(self.invalid("units.map", format!("entry {i} {pair:?}: channel must be < {}", crate::MAX_UNITS)));
                }
                if pair[1] as usize >= crate::units::MAX_SORTED_UNITS {
                    return Err(self.invalid("units.map", format!("entry {i} {pair:?}: unit must be < {}", crate::units::MAX_SORTED_UNITS)));
                }
                if !seen.insert(*pair) {
                    return Err(self.invalid("units.map", format!("entry {i} {:?} appears twice", pair)));
                }
            }
        }
        let s = &self.safety;
        if s.lower.is_empty() || s.upper.is_empty() {
            return Err(self.invalid("safety.lower/upper", "must not be empty"));
        }
        for (k, v) in s.lower.iter().chain(s.upper.iter()).enumerate() {
            if !v.is_finite() {
                return Err(self.invalid("safety.lower/upper", format!("value {k} is not finite")));
            }
        }
        if !(s.max_step.is_finite() && s.max_step > 0.0) {
            return Err(self.invalid("safety.max_step", format!("must be > 0, got {}", s.max_step)));
        }
        if s.fallback == FallbackKind::Vector && s.fallback_vector.is_none() {
            return Err(self.invalid("safety.fallback_vector", "is required when safety.fallback = \"vector\""));
        }
        if let Some(v) = &s.fallback_vector {
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(self.invalid(
                    "safety.fallback_vector",
                    format!("value {j} is {}; it must be a finite command inside [lower, upper]", v[j]),
                ));
            }
        }
        // Lower ≤ upper where the lengths already agree; with broadcasting, once m is known
        // (Safety::from_rig).
        for (j, (lo, hi)) in s.lower.iter().zip(s.upper.iter()).enumerate() {
            if s.lower.len() == s.upper.len() && lo > hi {
                return Err(self.invalid("safety.lower", format!("channel {j}: lower {lo} > upper {hi}")));
            }
        }
        match &self.objective {
            None if !self.is_probe() && !self.is_monitor() => {
                return Err(self.invalid(
                    "objective",
                    "is required (a [objective] table with kind and target); only kind = \"probe\" and kind = \"monitor\" run without one",
                ))
            }
            None => {}
            Some(o) => {
                use crate::control::objective::{check_target_values, MAX_RATE_CEILING_HZ};
                if let Some(max) = o.max_rate_hz {
                    if !(max > 0.0 && max <= MAX_RATE_CEILING_HZ) {
                        return Err(self
                            .invalid("objective.max_rate_hz", format!("is {max}; expected a number of Hz in (0, {MAX_RATE_CEILING_HZ}]")));
                    }
                }
                if o.target.is_empty() {
                    return Err(self.invalid("objective.target", "must be a non-empty list of finite numbers"));
                }
                check_target_values(o.kind == ObjectiveKind::Rates, &o.target, o.max_rate_hz())
                    .map_err(|e| self.invalid("objective.target", e))?;
            }
        }
        if let (Some(labels), Some(m)) = (&self.output.control_labels, self.output.control_dim) {
            if labels.len() != m {
                return Err(self.invalid("output.control_dim", format!("is {m} but output.control_labels has {} labels", labels.len())));
            }
        }
        if let Some(m) = self.output.control_dim {
            if m == 0 || m > crate::MAX_CONTROL {
                return Err(self.invalid("output.control_dim", format!("must be in 1..={}, got {m}", crate::MAX_CONTROL)));
            }
        }
        if self.is_probe() {
            if self.control_dim().is_none() {
                return Err(self.invalid(
                    "output.control_dim",
                    "is needed by an identification session (kind = \"probe\" has no model to take m from): give output.control_dim or output.control_labels",
                ));
            }
            if self.model.path.is_some() {
                return Err(self.invalid("model.path", "an identification session (kind = \"probe\") runs without a model; remove model.path or choose another controller kind"));
            }
        }
        self.controller.validate().map_err(|m| self.invalid("controller", m))?;
        self.model.particles.validate().map_err(|m| self.invalid("model.particles", m))?;
        self.model.embedding.validate().map_err(|(key, m)| self.invalid(&format!("model.embedding.{key}"), m))?;
        self.model.task_id.validate().map_err(|(key, m)| self.invalid(&format!("model.task_id.{key}"), m))?;
        if let Some(sim) = &self.sim {
            if sim.n_units == 0 || sim.latent_dim == 0 || sim.embed_dim == 0 || sim.control_dim == 0 {
                return Err(self.invalid("sim", "n_units, latent_dim, embed_dim and control_dim must be ≥ 1"));
            }
            if sim.latent_dim > crate::MAX_LATENT || sim.embed_dim > crate::MAX_EMBED || sim.control_dim > crate::MAX_CONTROL {
                return Err(self.invalid(
                    "sim",
                    format!("latent_dim ≤ {}, embed_dim ≤ {}, control_dim ≤ {}", crate::MAX_LATENT, crate::MAX_EMBED, crate::MAX_CONTROL),
                ));
            }
            if sim.n_units > crate::MAX_UNITS {
                return Err(self.invalid("sim.n_units", format!("must be in 1..={}, got {}", crate::MAX_UNITS, sim.n_units)));
            }
            if sim.hidden_dim == 0 || sim.hidden_dim > crate::MAX_HIDDEN {
                return Err(self.invalid("sim.hidden_dim", format!("must be in 1..={}, got {}", crate::MAX_HIDDEN, sim.hidden_dim)));
            }
            if sim.tasks == 0 || sim.tasks > crate::MAX_TASKS {
                return Err(self.invalid("sim.tasks", format!("must be in 1..={}, got {}", crate::MAX_TASKS, sim.tasks)));
            }
            if !(sim.switch_every_s.is_finite() && sim.switch_every_s >= 0.0) {
                return Err(self.invalid("sim.switch_every_s", "must be ≥ 0"));
            }
        }
        if !(self.fault.slow_ms.is_finite() && self.fault.slow_ms >= 0.0) {
            return Err(self.invalid("fault.slow_ms", "must be ≥ 0"));
        }
        Ok(())
    }

    /// Checks that need the model's dimensions.
    pub fn check_against_model(&self, dims: &crate::model::Dims, n_mapped_units: usize) -> Result<(), RigError> {
        if n_mapped_units != dims.n_units {
            return Err(self.invalid("units", format!("maps {n_mapped_units} model units but the model has {} units", dims.n_units)));
        }
        if dims.latent > crate::MAX_LATENT || dims.embed > crate::MAX_EMBED || dims.control > crate::MAX_CONTROL {
            return Err(self.invalid(
                "model.path",
                format!(
                    "model dimensions d={} e={} m={} exceed neuroloop's limits d ≤ {}, e ≤ {}, m ≤ {}",
                    dims.latent,
                    dims.embed,
                    dims.control,
                    crate::MAX_LATENT,
                    crate::MAX_EMBED,
                    crate::MAX_CONTROL
                ),
            ));
        }
        self.broadcast("safety.lower", &self.safety.lower, dims.control)?;
        self.broadcast("safety.upper", &self.safety.upper, dims.control)?;
        if let Some(v) = &self.safety.fallback_vector {
            if v.len() != dims.control {
                return Err(self.invalid("safety.fallback_vector", format!("has {} values; the model has m = {}", v.len(), dims.control)));
            }
        }
        let objective = self.objective()?;
        match objective.kind {
            ObjectiveKind::Latent if objective.target.len() != dims.latent => {
                return Err(self.invalid(
                    "objective.target",
                    format!("has {} values; a latent objective needs d = {}", objective.target.len(), dims.latent),
                ))
            }
            ObjectiveKind::Rates => {
                self.broadcast("objective.target", &objective.target, dims.n_units)?;
            }
            _ => {}
        }
        if let Some(m) = self.output.control_dim {
            if m != dims.control {
                return Err(self.invalid("output.control_dim", format!("is {m}; the model has m = {}", dims.control)));
            }
        }
        if let Some(labels) = &self.output.control_labels {
            if labels.len() != dims.control {
                return Err(
                    self.invalid("output.control_labels", format!("has {} labels; the model has m = {}", labels.len(), dims.control))
                );
            }
        }
        Ok(())
    }
}
