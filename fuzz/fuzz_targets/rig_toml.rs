#![no_main]
// See neuroloop::fuzz::rig_toml.
libfuzzer_sys::fuzz_target!(|data: &[u8]| neuroloop::fuzz::rig_toml(data));
