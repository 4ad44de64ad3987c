//! Shares through the public API: every refusal, and properties over random (t, n).

use keyring::shares::{
    self, check_parameters, deal, reconstruct, Commitments, DealingContext, Share,
};
use keyring::{Error, GatekeeperId, MasterSecret};
use proptest::prelude::*;
use rand_core::OsRng;

fn ctx(m: &MasterSecret) -> DealingContext {
    DealingContext {
        gatekeeper_id: GatekeeperId([7; 32]),
        epoch: 1,
        generation: 0,
        master_public_key: m.public_key(),
    }
}

/// A share at `index` with a value that is not on the polynomial.
fn forged(index: u8) -> Share {
    let mut v = [0u8; 32];
    v[0] = 42;
    Share::from_bytes(index, &v).unwrap()
}

#[test]
fn parameter_errors() {
    assert_eq!(check_parameters(0, 3), Err(Error::ThresholdZero));
    assert_eq!(
        check_parameters(4, 3),
        Err(Error::ThresholdExceedsShares {
            threshold: 4,
            shares: 3
        })
    );
    assert_eq!(check_parameters(1, 0), Err(Error::ShareCountOutOfRange(0)));
    assert_eq!(
        check_parameters(2, 256),
        Err(Error::ShareCountOutOfRange(256))
    );
    check_parameters(1, 1).unwrap();
    check_parameters(255, 255).unwrap();

    let m = MasterSecret::generate(&mut OsRng);
    assert_eq!(
        deal(&m, &ctx(&m), 0, 3, &mut OsRng).unwrap_err(),
        Error::ThresholdZero
    );
    assert_eq!(
        deal(&m, &ctx(&m), 4, 3, &mut OsRng).unwrap_err(),
        Error::ThresholdExceedsShares {
            threshold: 4,
            shares: 3
        }
    );
}

#[test]
fn dealing_for_another_master_is_refused() {
    let m = MasterSecret::generate(&mut OsRng);
    let other = MasterSecret::generate(&mut OsRng);
    assert_eq!(
        deal(&m, &ctx(&other), 2, 3, &mut OsRng).unwrap_err(),
        Error::MasterKeyMismatch
    );
}

#[test]
fn t_equals_n_works() {
    let m = MasterSecret::generate(&mut OsRng);
    let d = deal(&m, &ctx(&m), 5, 5, &mut OsRng).unwrap();
    let r = reconstruct(&ctx(&m), &d.commitments, &d.wrapped, &d.shares).unwrap();
    assert_eq!(r.public_key(), m.public_key());
}

#[test]
fn share_errors() {
    let m = MasterSecret::generate(&mut OsRng);
    let c = ctx(&m);
    let d = deal(&m, &c, 3, 5, &mut OsRng).unwrap();

    // Index 0 cannot even be built.
    assert_eq!(
        Share::from_bytes(0, &[1; 32]).unwrap_err(),
        Error::ZeroShareIndex
    );
    // Non-canonical scalar.
    assert_eq!(
        Share::from_bytes(1, &[0xff; 32]).unwrap_err(),
        Error::InvalidSecret("share value")
    );
    // Duplicate index.
    let dup = vec![
        d.shares[0].clone(),
        d.shares[1].clone(),
        d.shares[0].clone(),
    ];
    assert_eq!(
        reconstruct(&c, &d.commitments, &d.wrapped, &dup).unwrap_err(),
        Error::DuplicateShareIndex(1)
    );
    // A share that fails its commitment, named by index.
    let bad = vec![d.shares[0].clone(), forged(2), d.shares[2].clone()];
    assert_eq!(
        reconstruct(&c, &d.commitments, &d.wrapped, &bad).unwrap_err(),
        Error::ShareVerificationFailed { index: 2 }
    );
    assert_eq!(
        d.commitments.verify(&forged(4)).unwrap_err(),
        Error::ShareVerificationFailed { index: 4 }
    );
    // Fewer than t.
    assert_eq!(
        reconstruct(&c, &d.commitments, &d.wrapped, &d.shares[..2]).unwrap_err(),
        Error::NotEnoughShares { got: 2, needed: 3 }
    );
    assert_eq!(
        reconstruct(&c, &d.commitments, &d.wrapped, &[]).unwrap_err(),
        Error::NotEnoughShares { got: 0, needed: 3 }
    );
}

#[test]
fn reconstruction_that_does_not_match_the_epoch_key_is_refused() {
    let m = MasterSecret::generate(&mut OsRng);
    let c = ctx(&m);
    let d = deal(&m, &c, 2, 3, &mut OsRng).unwrap();
    // The context claims another master public key: refused (the AAD binds it, and the final
    // public-key check would catch it anyway).
    let other = MasterSecret::generate(&mut OsRng);
    let mut wrong = c;
    wrong.master_public_key = other.public_key();
    let err = reconstruct(&wrong, &d.commitments, &d.wrapped, &d.shares[..2]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MasterKeyMismatch | Error::WrappedSecretOpenFailed
        ),
        "{err:?}"
    );

    // Another dealing's wrapped secret under this dealing's shares: refused.
    let d2 = deal(&m, &c, 2, 3, &mut OsRng).unwrap();
    assert_eq!(
        reconstruct(&c, &d.commitments, &d2.wrapped, &d.shares[..2]).unwrap_err(),
        Error::WrappedSecretOpenFailed
    );
    // Same shares, another epoch or generation: refused.
    let mut later = c;
    later.generation = 1;
    assert_eq!(
        reconstruct(&later, &d.commitments, &d.wrapped, &d.shares[..2]).unwrap_err(),
        Error::WrappedSecretOpenFailed
    );
}

#[test]
fn old_generation_shares_do_not_combine_with_new_ones() {
    let m = MasterSecret::generate(&mut OsRng);
    let g0 = ctx(&m);
    let mut g1 = g0;
    g1.generation = 1;
    let old = deal(&m, &g0, 2, 3, &mut OsRng).unwrap();
    let new = deal(&m, &g1, 2, 3, &mut OsRng).unwrap();
    // A removed node kept old share 3; mixed with a current share it fails verification.
    let mixed = vec![new.shares[0].clone(), old.shares[2].clone()];
    assert_eq!(
        reconstruct(&g1, &new.commitments, &new.wrapped, &mixed).unwrap_err(),
        Error::ShareVerificationFailed { index: 3 }
    );
    // And the new set alone still works.
    let r = reconstruct(&g1, &new.commitments, &new.wrapped, &new.shares[1..]).unwrap();
    assert_eq!(r.public_key(), m.public_key());
}

#[test]
fn commitments_parse_errors() {
    assert_eq!(
        Commitments::from_bytes(&[]).unwrap_err(),
        Error::InvalidCommitments("count must be 1..=255")
    );
    assert!(matches!(
        Commitments::from_bytes(&[vec![1; 31]]).unwrap_err(),
        Error::InvalidLength { .. }
    ));
    // 0xff.. is not a valid Ristretto encoding.
    assert_eq!(
        Commitments::from_bytes(&[vec![0xff; 32]]).unwrap_err(),
        Error::InvalidCommitments("point does not decode")
    );
    // The identity as C_0.
    assert_eq!(
        Commitments::from_bytes(&[vec![0; 32]]).unwrap_err(),
        Error::InvalidCommitments("C_0 is the identity")
    );
    let m = MasterSecret::generate(&mut OsRng);
    let d = deal(&m, &ctx(&m), 3, 4, &mut OsRng).unwrap();
    let raw: Vec<Vec<u8>> = d
        .commitments
        .as_slice()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(Commitments::from_bytes(&raw).unwrap(), d.commitments);
}

#[test]
fn default_threshold_is_a_majority() {
    assert_eq!(shares::default_threshold(1), 1);
    assert_eq!(shares::default_threshold(3), 2);
    assert_eq!(shares::default_threshold(4), 3);
    assert_eq!(shares::default_threshold(5), 3);
}

fn params() -> impl Strategy<Value = (usize, usize, u64)> {
    (1usize..=9)
        .prop_flat_map(|n| (1usize..=n, Just(n)))
        .prop_flat_map(|(t, n)| (Just(t), Just(n), any::<u64>()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any t of the n shares (chosen by a seed) rebuild the master secret.
    #[test]
    fn any_t_of_n_rebuild((t, n, seed) in params()) {
        let m = MasterSecret::generate(&mut OsRng);
        let c = ctx(&m);
        let d = deal(&m, &c, t, n, &mut OsRng).unwrap();
        let mut idx: Vec<usize> = (0..n).collect();
        // Deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            idx.swap(i, (s >> 33) as usize % (i + 1));
        }
        let chosen: Vec<Share> = idx[..t].iter().map(|&i| d.shares[i].clone()).collect();
        let r = reconstruct(&c, &d.commitments, &d.wrapped, &chosen).unwrap();
        let (got, want) = (r.to_bytes(), m.to_bytes());
        prop_assert!(got.as_ref() == want.as_ref(), "rebuilt secret differs");
        // More than t verified shares work too.
        let r = reconstruct(&c, &d.commitments, &d.wrapped, &d.shares).unwrap();
        prop_assert_eq!(r.public_key(), m.public_key());
    }

    /// t − 1 shares never rebuild a secret matching the master public key.
    #[test]
    fn t_minus_one_never_rebuild((t, n, _seed) in params()) {
        prop_assume!(t >= 2);
        let m = MasterSecret::generate(&mut OsRng);
        let c = ctx(&m);
        let d = deal(&m, &c, t, n, &mut OsRng).unwrap();
        let err = reconstruct(&c, &d.commitments, &d.wrapped, &d.shares[..t - 1]).unwrap_err();
        prop_assert_eq!(err, Error::NotEnoughShares { got: t - 1, needed: t });
        // Padding t − 1 real shares with a forged one does not help either.
        let mut padded: Vec<Share> = d.shares[..t - 1].to_vec();
        padded.push(forged(t as u8));
        let err = reconstruct(&c, &d.commitments, &d.wrapped, &padded).unwrap_err();
        prop_assert_eq!(err, Error::ShareVerificationFailed { index: t as u8 });
    }

    /// Any single flipped bit in any share is caught by its commitment.
    #[test]
    fn tampered_share_is_caught((t, n, seed) in params(), bit in 0usize..252) {
        let m = MasterSecret::generate(&mut OsRng);
        let d = deal(&m, &ctx(&m), t, n, &mut OsRng).unwrap();
        let victim = &d.shares[(seed as usize) % n];
        let mut v = *victim.value_bytes();
        v[bit / 8] ^= 1 << (bit % 8);
        // A flip can make the scalar non-canonical; that is refused at parse time instead.
        let expected_parse = Error::InvalidSecret("share value");
        let expected_verify = Error::ShareVerificationFailed { index: victim.index() };
        match Share::from_bytes(victim.index(), &v) {
            Err(e) => prop_assert_eq!(e, expected_parse),
            Ok(s) => prop_assert_eq!(d.commitments.verify(&s).unwrap_err(), expected_verify),
        }
    }
}
