import { describe, it, expect } from "vitest";
import { EdgeTrustError, ErrorCodes, readProblem, toEdgeTrustError, isEdgeTrustError } from "./errors.js";

describe("EdgeTrustError", () => {
  it("carries a stable code, its HTTP status and a one-line CLI form", () => {
    const e = new EdgeTrustError("HSM_PIN_INCORRECT", "the token refused the PIN", { hint: "check the PIN file" });
    expect(e.code).toBe("HSM_PIN_INCORRECT");
    expect(e.status).toBe(ErrorCodes.HSM_PIN_INCORRECT.status);
    expect(e.toLine()).toBe("the token refused the PIN (HSM_PIN_INCORRECT): check the PIN file");
    expect(e.toLine()).not.toContain("\n");
  });

  it("renders RFC 9457 problem details", () => {
    const p = new EdgeTrustError("INVALID_INPUT", "body/csr: must be PEM", { details: { field: "csr" } }).toProblem("/v1/x");
    expect(p).toEqual({
      type: "urn:edgetrust:error:invalid-input",
      title: "Invalid input",
      status: 400,
      detail: "body/csr: must be PEM",
      code: "INVALID_INPUT",
      instance: "/v1/x",
      errors: { field: "csr" },
    });
  });

  it("wraps foreign errors without losing them", () => {
    const inner = new TypeError("boom");
    const e = toEdgeTrustError(inner, "HSM_OPERATION_FAILED");
    expect(isEdgeTrustError(e, "HSM_OPERATION_FAILED")).toBe(true);
    expect(e.cause).toBe(inner);
    expect(toEdgeTrustError(e)).toBe(e);
  });

  it("every code maps to an HTTP status", () => {
    for (const [code, v] of Object.entries(ErrorCodes)) {
      expect(v.status, code).toBeGreaterThanOrEqual(400);
      expect(v.status, code).toBeLessThan(600);
    }
  });

  it("reads another service's problem+json, keeping only known codes", () => {
    const body = JSON.stringify(new EdgeTrustError("FORBIDDEN", "not yours", { hint: "ask" }).toProblem("/x"));
    expect(readProblem(body)).toEqual({ code: "FORBIDDEN", detail: "not yours", hint: "ask" });
    expect(readProblem('{"code":"MADE_UP","detail":"d"}')).toEqual({ detail: "d" });
    expect(readProblem("<html>502</html>")).toEqual({});
    expect(readProblem("null")).toEqual({});
  });
});
