// Package sitegate plugs sitegate's Caddy modules into a Caddy build. Importing it registers them,
// so the module path itself is the xcaddy plugin:
//
//	xcaddy build v2.11.9 --with github.com/sitegate/sitegate@<version>
//
// The modules live in package caddymodule; the domain logic in sessions and upstream.
package sitegate

import _ "github.com/sitegate/sitegate/caddymodule"
