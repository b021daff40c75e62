package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// dialect selects the error shape of an endpoint family.
type dialect int

const (
	// dialectV1 answers fabric's APIError: {"error": CODE, "code": "<status>", "message": …}.
	dialectV1 dialect = iota
	// dialectUMS answers User APIs 2.0 errors: {"code": CODE, "message": …}.
	dialectUMS
	// dialectOAuth2 answers RFC 6749 §5.2 errors: {"error": code, "error_description": …}.
	dialectOAuth2
	// dialectECE answers ECE's BasicFailedReply with an x-cloud-error-codes header.
	dialectECE
)

// timestamp formats t as fabric's documents do: RFC 3339, UTC, milliseconds.
func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// maxBody caps request bodies; identity requests are small.
const maxBody = 64 << 10

// writeJSON writes v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"INTERNAL_SERVER_ERROR","code":"500","message":"Internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// fail writes an error in the shape of dialect d.
func fail(w http.ResponseWriter, d dialect, status int, code, message string) {
	switch d {
	case dialectUMS:
		writeJSON(w, status, map[string]string{"code": code, "message": message})
	case dialectOAuth2:
		if status == http.StatusUnauthorized {
			if code == "invalid_client" {
				w.Header().Set("WWW-Authenticate", `Basic realm="emulator"`)
			} else {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer error=%q, error_description=%q`, code, message))
			}
		}
		writeJSON(w, status, map[string]string{"error": code, "error_description": message})
	case dialectECE:
		w.Header().Set("x-cloud-error-codes", code)
		writeJSON(w, status, map[string]any{"errors": []map[string]any{{"code": code, "message": message, "fields": []string{}}}})
	default:
		writeJSON(w, status, map[string]string{"error": code, "code": strconv.Itoa(status), "message": message})
	}
}

// failStatus writes a server-side failure with status in dialect d's words, as the fault switches do.
func failStatus(w http.ResponseWriter, d dialect, status int) {
	switch {
	case d == dialectECE && status == http.StatusNotImplemented:
		fail(w, d, status, "authc.no_authentication_cluster", "The administrator needs to configure the authentication cluster.")
	case d == dialectECE && status == http.StatusBadGateway:
		fail(w, d, status, "authc.authentication_cluster_error", "The authentication cluster failed to process the request. The response body contains details about the error.")
	case d == dialectECE:
		fail(w, d, status, "root.unexpected_error", http.StatusText(status))
	case d == dialectOAuth2 && status == http.StatusServiceUnavailable:
		fail(w, d, status, "temporarily_unavailable", "The service is temporarily unavailable.")
	case d == dialectOAuth2:
		fail(w, d, status, "server_error", http.StatusText(status))
	case d == dialectUMS:
		fail(w, d, status, statusCode(status), "The request was received but an internal error occurred")
	case status == http.StatusInternalServerError:
		fail(w, d, status, "INTERNAL_SERVER_ERROR", "Internal server error")
	default:
		fail(w, d, status, statusCode(status), http.StatusText(status))
	}
}

// statusCode turns a status into an upper-snake error code: 503 → SERVICE_UNAVAILABLE.
func statusCode(status int) string {
	return strings.ToUpper(strings.ReplaceAll(http.StatusText(status), " ", "_"))
}

// errBadRequest is a request the emulator refuses with 400; its message is safe to show.
type errBadRequest struct{ msg string }

func (e errBadRequest) Error() string { return e.msg }

func badRequest(format string, args ...any) error { return errBadRequest{fmt.Sprintf(format, args...)} }

// decodeJSON decodes a JSON object body into v. The errors it returns are errBadRequest with a
// precise message: wrong content type, empty body, malformed JSON with its offset, a field of the
// wrong type, trailing data, or a body over the size cap.
func decodeJSON(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return badRequest("Content-Type must be application/json")
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	err := dec.Decode(v)
	var (
		syntax  *json.SyntaxError
		typeErr *json.UnmarshalTypeError
		tooBig  *http.MaxBytesError
	)
	switch {
	case err == nil:
		if dec.More() {
			return badRequest("request body must hold a single JSON object")
		}
		if _, err := dec.Token(); err != io.EOF {
			return badRequest("request body must hold a single JSON object")
		}
		return nil
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty")
	case errors.As(err, &syntax):
		return badRequest("malformed JSON at offset %d", syntax.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return badRequest("request body must be a JSON object")
		}
		return badRequest("field %q must be of type %s", typeErr.Field, jsonType(typeErr.Type.Kind().String()))
	case errors.As(err, &tooBig):
		return badRequest("request body is larger than %d bytes", maxBody)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: unexpected end of input")
	default:
		return badRequest("malformed JSON")
	}
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	default:
		return "number"
	}
}

// required returns a 400 naming the first of the named fields whose value is empty.
func required(fields ...string) error {
	for i := 0; i+1 < len(fields); i += 2 {
		if strings.TrimSpace(fields[i+1]) == "" {
			return badRequest("%s is required", fields[i])
		}
	}
	return nil
}
