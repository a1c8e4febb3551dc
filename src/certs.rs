//! `raftflow certs`: a local CA and node certificates for mutual TLS between peers (rcgen),
//! so that a secure cluster needs no other tool. For production, any CA works: each node needs
//! a certificate naming the host of its peer address, usable for both server and client auth.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Where the files go: ca.pem and ca-key.pem (made once, reused after), then
    /// node-ID.pem and node-ID-key.pem for each --node.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// A node as ID=HOST[,HOST...]: its id and the hosts (IPs or DNS names) its peers reach
    /// it at. Repeat for every node.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

/// Parses `ID=HOST[,HOST...]`.
fn parse_node(s: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let (id, hosts) = s
        .split_once('=')
        .with_context(|| format!("--node {s:?}: expected ID=HOST[,HOST...]"))?;
    let id: u64 = id
        .trim()
        .parse()
        .with_context(|| format!("--node {s:?}: bad node id"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        bail!("--node {s:?} names no host");
    }
    Ok((id, hosts))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The CA in `dir`, made there first if it has none.
fn ca(dir: &Path, days: u32) -> anyhow::Result<(rcgen::Certificate, KeyPair, bool)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path).with_context(|| {
            format!(
                "{} exists but {} cannot be read",
                cert_path.display(),
                key_path.display()
            )
        })?)?;
        let params = CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(&cert_path)?)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        // The same name and key: certificates it signs chain to the CA file on disk.
        let cert = params.self_signed(&key)?;
        return Ok((cert, key, false));
    }
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "raftflow cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days.max(3650));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert, key, true))
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let nodes: Vec<(u64, Vec<String>)> = args
        .nodes
        .iter()
        .map(|n| parse_node(n))
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let (ca_cert, ca_key, new) = ca(&args.dir, args.days)?;
    println!(
        "{} CA {}",
        if new { "made" } else { "reused" },
        args.dir.join("ca.pem").display()
    );
    for (id, hosts) in nodes {
        let mut params = CertificateParams::new(hosts.clone())
            .with_context(|| format!("node {id}: hosts {hosts:?}"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("raftflow node {id}"));
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, args.days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        let cert_path = args.dir.join(format!("node-{id}.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        write_private(
            &args.dir.join(format!("node-{id}-key.pem")),
            &key.serialize_pem(),
        )?;
        println!(
            "node {id}: {} for {}",
            cert_path.display(),
            hosts.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_parse_and_garbage_is_refused() {
        assert_eq!(
            parse_node("3=127.0.0.3, node3.example").unwrap(),
            (3, vec!["127.0.0.3".into(), "node3.example".into()])
        );
        for bad in ["3", "x=127.0.0.1", "3="] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificates_load_as_peer_tls_and_a_second_run_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let run_for = |nodes: &[&str]| {
            run(CertsArgs {
                dir: dir.path().to_path_buf(),
                nodes: nodes.iter().map(|s| s.to_string()).collect(),
                days: 30,
            })
            .unwrap()
        };
        run_for(&["1=127.0.0.1", "2=127.0.0.2"]);
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        run_for(&["3=127.0.0.3"]);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        for id in 1..=3 {
            let p = |f: String| dir.path().join(f);
            raftflow_raft::PeerTls::load(
                &p("ca.pem".into()),
                &p(format!("node-{id}.pem")),
                &p(format!("node-{id}-key.pem")),
            )
            .unwrap();
        }
    }
}
