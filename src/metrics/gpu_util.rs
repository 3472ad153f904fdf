//! GPU utilization as NVML reports it (the share of time in which any kernel ran on the GPU,
//! over NVML's own sample period), sampled by a thread during the measured iterations. The device
//! is found by its PCI bus id, which CUDA and NVML agree on whatever CUDA_VISIBLE_DEVICES says.
//! NVML is loaded at run time: where it is missing the run goes on and says it measured none.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the sampler asks; NVML's own period is 1/6 s to 1 s depending on the product.
const PERIOD: Duration = Duration::from_millis(100);

/// Utilization in percent over the measured iterations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuUtilization {
    pub mean: f64,
    pub max: f64,
    pub samples: u64,
}

impl GpuUtilization {
    /// None for no samples.
    pub fn of(samples: &[u32]) -> Option<GpuUtilization> {
        if samples.is_empty() {
            return None;
        }
        let n = samples.len() as f64;
        Some(GpuUtilization {
            mean: samples.iter().map(|&s| s as f64).sum::<f64>() / n,
            max: samples.iter().copied().max().unwrap_or(0) as f64,
            samples: samples.len() as u64,
        })
    }
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<u32>, String>>,
}

fn nvml() -> Result<nvml_wrapper::Nvml, String> {
    // The driver installs the versioned name; the unversioned one comes with development packages.
    nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .or_else(|_| nvml_wrapper::Nvml::init())
        .map_err(|e| format!("NVML (libnvidia-ml.so.1): {e}"))
}

impl Sampler {
    /// Start sampling the GPU at `pci_bus_id` ("00000000:19:00.0").
    pub fn start(pci_bus_id: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let nvml = nvml()?;
            let device = nvml.device_by_pci_bus_id(pci_bus_id.as_str()).map_err(|e| format!("NVML: GPU {pci_bus_id}: {e}"))?;
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push(device.utilization_rates().map_err(|e| format!("NVML: utilization of {pci_bus_id}: {e}"))?.gpu);
                std::thread::sleep(PERIOD);
            }
            Ok(samples)
        });
        Sampler { stop, thread }
    }

    /// Stop, and the utilization seen, or why there is none.
    pub fn finish(self) -> Result<GpuUtilization, String> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().map_err(|_| "the NVML sampling thread panicked".to_string())??;
        GpuUtilization::of(&samples).ok_or_else(|| "no NVML sample was taken".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_max_of_the_samples() {
        assert_eq!(GpuUtilization::of(&[]), None);
        assert_eq!(GpuUtilization::of(&[100, 50, 90]), Some(GpuUtilization { mean: 80.0, max: 100.0, samples: 3 }));
    }

    #[test]
    fn without_nvml_the_sampler_says_why() {
        if nvml().is_ok() {
            eprintln!("SKIPPED: NVML is present here; scripts/gpu-check.sh covers it");
            return;
        }
        let why = Sampler::start("00000000:00:00.0".into()).finish().unwrap_err();
        assert!(why.contains("NVML"), "{why}");
    }
}
