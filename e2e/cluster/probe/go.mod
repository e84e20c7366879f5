// The probe: a test tool run inside sandboxes on the e2e node (see ../README.md). Standard
// library only.
module palisade.dev/e2e/cluster/probe

go 1.26.0
