package emulator

func (e *Emulator) oauth2Routes() {}

// authCode is an issued authorization code awaiting exchange.
type authCode struct{}
