import { Type } from "@sinclair/typebox";

/** Wire schemas more than one feature (ca, enrollment) takes in its requests. */
export const CsrPem = Type.String({ minLength: 64, maxLength: 16384, pattern: "-----BEGIN (NEW )?CERTIFICATE REQUEST-----", description: "PKCS#10 request, PEM" });
export const DeviceId = Type.String({ pattern: "^[A-Za-z0-9][A-Za-z0-9._:@$=+-]{0,127}$" });
