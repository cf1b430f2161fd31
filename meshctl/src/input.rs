//! Reading `-f` arguments: files, directories and standard input.

use std::{io::Read, path::Path};

use mesh_core::config::{Loaded, load_path, load_str};

/// Loads every `-f` argument; `-` reads standard input.
pub(crate) fn load(files: &[String]) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::default();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            loaded.extend(load_str(&text, None));
        } else {
            let path = Path::new(f);
            if !path.exists() {
                anyhow::bail!("{f}: no such file or directory");
            }
            loaded.extend(load_path(path));
        }
    }
    Ok(loaded)
}
