/**
 * Whole seconds: every UTCTime and GeneralizedTime we emit (certificates, CRLs, OCSP) carries no fraction. RFC 5280
 * §4.1.2.5.2 forbids fractional seconds in GeneralizedTime (and UTCTime has none), and GnuTLS refuses them.
 */
export function wholeSeconds(d: Date | string | number): Date {
  const ms = new Date(d).getTime();
  return new Date(ms - (((ms % 1000) + 1000) % 1000));
}
