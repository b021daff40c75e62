package emulator

func (e *Emulator) v1Routes() {}

// address is a user's address; the v1 address endpoints manage them.
type address struct{}
