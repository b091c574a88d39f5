package server

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// The dashboard (GET /) is a static page, embedded in the binary, that
// reads the API with the token the user types in: the page itself needs
// no token, and every call it makes is an ordinary API call with
// "Authorization: Bearer", checked like the CLI's. No cookie is ever set,
// so a page of another site cannot make the browser act with the user's
// rights (no CSRF), and the token never appears in a URL (the event
// stream is read with fetch, which can send the header, not EventSource,
// which cannot).

//go:embed ui
var uiFiles embed.FS

// uiFile is the content type of each embedded file by extension.
var uiTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// uiHeaders keeps the page to its own origin: scripts and styles only from
// the control node (no inline script, so injected markup cannot run), API
// calls only to it, never framed (no clickjacking of the buttons), and no
// referrer sent anywhere.
func uiHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

// serveUI answers GET / (the page) and GET /ui/{file} (its script and
// style) from the embedded files; anything else is 404.
func serveUI(w http.ResponseWriter, r *http.Request) {
	name := "index.html"
	if f := r.PathValue("file"); f != "" {
		name = f
	}
	ctype, ok := uiTypes[path.Ext(name)]
	if !ok || strings.Contains(name, "/") {
		http.NotFound(w, r)
		return
	}
	b, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	uiHeaders(w)
	w.Header().Set("Content-Type", ctype)
	_, _ = w.Write(b)
}

// whoami answers GET /api/v1/whoami: the name and role of the token, so
// the page shows the operator's buttons only to an operator (the API
// refuses a viewer's change anyway: 403).
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	role := "viewer"
	if id.Role >= RoleOperator {
		role = "operator"
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": id.Name, "role": role, "node": s.Node.Stats().ID})
}
