// CoreDNS with only the plugins the Palisade e2e cluster uses (the cluster DNS, and the fake
// upstream resolver of the "outside world" namespace). Building every plugin of the coredns
// module pulls in the SDKs of three clouds; this is the custom build CoreDNS documents
// (coremain with a chosen plugin list). Test harness only. See ../../build.sh.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

// The plugins' order in a server block's chain, as in CoreDNS's own plugin.cfg.
var directives = []string{
	"reload", "bind", "ready", "health", "errors", "log", "loadbalance", "cache",
	"template", "hosts", "kubernetes", "loop", "forward",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
