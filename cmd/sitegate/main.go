// Command sitegate is Caddy with its standard modules plus sitegate's. It takes every Caddy
// subcommand: `sitegate run --config Caddyfile.example`, `sitegate list-modules`, `sitegate adapt`.
// `sitegate version` names sitegate's version and the Caddy it is built on.
//
// To add other plugins, build with xcaddy instead (see xcaddy.sh).
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/sitegate/sitegate/caddymodule"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Println(version())
		return
	}
	caddycmd.Main()
}

// version is sitegate's module version (with the commit when the build recorded one) and Caddy's.
func version() string {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
	}
	simple, _ := caddy.Version()
	return fmt.Sprintf("sitegate %s (Caddy %s)", v, simple)
}
