//! Files ringbench writes: per-rank HDF5 results, the CSV tables reduced from them, and verify's
//! hidden states. Every file is written under a temporary name and moved into place only when
//! complete; a file that someone else's run wrote is never replaced.

pub mod decode;
pub mod rankfile;
pub mod reduce;
pub mod status;
pub mod summary;
pub mod tables;
mod train;

use anyhow::{bail, Context, Result};
use hdf5::types::VarLenUnicode;
use std::path::{Path, PathBuf};

/// Write FP32 hidden states to a new HDF5 file, one dataset per (name, [batch, tokens, d_model],
/// values), each with the run's description as attribute `config`.
pub fn write_hidden_states(path: &Path, datasets: &[(&str, &[usize], &[f32])], config: &str) -> Result<()> {
    let tmp = partial_name(path);
    let written = (|| -> hdf5::Result<()> {
        let file = hdf5::File::create_excl(&tmp)?;
        let text: VarLenUnicode = config.parse().map_err(|e| hdf5::Error::from(format!("{e}")))?;
        for (name, shape, data) in datasets {
            // A name with slashes ("grad/layer0/w_o") lives in groups, made as they are first needed.
            let (groups, leaf) = name.rsplit_once('/').unwrap_or(("", name));
            let mut at = file.group("/")?;
            for g in groups.split('/').filter(|g| !g.is_empty()) {
                at = match at.group(g) {
                    Ok(existing) => existing,
                    Err(_) => at.create_group(g)?,
                };
            }
            let ds = at.new_dataset::<f32>().shape(shape.to_vec()).create(leaf)?;
            ds.write_raw(data)?;
            ds.new_attr::<VarLenUnicode>().create("config")?.write_scalar(&text)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        bail!("writing {}: {e}", tmp.display());
    }
    publish(&tmp, path)
}

/// `path` with `.partial` appended: where a file lives until it is complete.
pub fn partial_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Move a complete file into place; fails, keeping both files, if `path` already exists.
pub fn publish(tmp: &Path, path: &Path) -> Result<()> {
    // A hard link cannot replace an existing name, unlike rename.
    std::fs::hard_link(tmp, path)
        .with_context(|| format!("publishing {} as {} (an existing file is never replaced)", tmp.display(), path.display()))?;
    std::fs::remove_file(tmp).with_context(|| format!("removing {}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_states_round_trip_and_an_existing_file_is_kept() {
        let dir = std::env::temp_dir().join(format!("ringbench-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.h5");
        let _ = std::fs::remove_file(&path);
        let data: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.5).collect();
        write_hidden_states(&path, &[("output", &[2, 3, 4], &data), ("grad/layer0/w_o", &[3, 8], &data)], "tiny").unwrap();
        let file = hdf5::File::open(&path).unwrap();
        let ds = file.dataset("output").unwrap();
        assert_eq!(ds.shape(), vec![2, 3, 4]);
        assert_eq!(ds.read_raw::<f32>().unwrap(), data);
        assert_eq!(file.dataset("grad/layer0/w_o").unwrap().shape(), vec![3, 8]);
        drop(file);
        let err = write_hidden_states(&path, &[("output", &[2, 3, 4], &[0.0; 24])], "again").unwrap_err();
        assert!(format!("{err:#}").contains("never replaced"), "{err:#}");
        let still = hdf5::File::open(&path).unwrap().dataset("output").unwrap().read_raw::<f32>().unwrap();
        assert_eq!(still, data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
