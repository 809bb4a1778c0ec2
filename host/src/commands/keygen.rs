//! `kestrel keygen`: a new Ed25519 signing key for model bundles and its public key.

use anyhow::Context;
use kestrel_bundle::SigningKey;

use crate::cli::KeygenArgs;

/// `kestrel keygen`.
pub fn run(a: &KeygenArgs) -> anyhow::Result<()> {
    let key_path = a.output.join("signing.key");
    let pub_path = a.output.join("signing.pub");
    // Checked up front for both files, so a refusal never leaves a new private key without its public half.
    for p in [&key_path, &pub_path] {
        if p.exists() {
            anyhow::bail!(
                "{} already exists; keygen never overwrites a key (choose another folder)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let key = SigningKey::generate()?;
    key.write_file(&key_path)?;
    let public = key.public_key();
    public.write_file(&pub_path)?;
    println!(
        "signing key {} (mode 0600; keep it on this host)\npublic key  {} (fingerprint {}; install it in each unit's <state>/trusted/)",
        key_path.display(),
        pub_path.display(),
        public.fingerprint()
    );
    Ok(())
}
