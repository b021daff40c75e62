package sessions

import (
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults for RedisOptions.
const (
	DefaultKeyPrefix = "sitegate:"
	DefaultOpTimeout = 2 * time.Second
)

// RedisOptions select and configure the Redis deployment. Exactly one of URL, SentinelAddrs
// (with MasterName) or ClusterAddrs is set.
type RedisOptions struct {
	// URL is a standalone server: redis://[user:password@]host[:port][/db][?options] or
	// rediss:// for TLS (go-redis ParseURL syntax). The fields below override it when set.
	URL string
	// MasterName and SentinelAddrs select a Sentinel-managed master.
	MasterName    string
	SentinelAddrs []string
	// ClusterAddrs are seed nodes of a Redis Cluster (one address is enough).
	ClusterAddrs []string

	Username string
	Password string
	// DB selects a database (not with Cluster).
	DB int
	// TLS enables TLS with this configuration.
	TLS *tls.Config
	// DisableIdentity skips CLIENT SETINFO on connect, for Redis < 7.2 and managed services
	// that reject it.
	DisableIdentity bool

	// KeyPrefix starts every key (default "sitegate:").
	KeyPrefix string
	// DialTimeout, ReadTimeout and WriteTimeout are go-redis's (zero: its defaults).
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
	// OpTimeout bounds every store operation, retries included (default 2s).
	OpTimeout time.Duration
}

// RedisStore is a Store in Redis, shared by every instance. A session is one key,
// <prefix>{<store key>}:s, whose TTL follows the session's idle and absolute timeouts; keys a
// session may add later share its hash tag, so they stay in one Cluster slot.
type RedisStore struct {
	core
}

var _ Store = (*RedisStore)(nil)

//go:embed cas.lua
var casSrc string

var casScript = redis.NewScript(casSrc)

// Redis is a connection pool to one Redis deployment, with the key prefix and operation timeout
// of the stores built on it. Stores share it: Close it after the last store is done.
type Redis struct {
	c         redis.UniversalClient
	prefix    string
	opTimeout time.Duration
}

// OpenRedis returns a pool for ro. It does no network I/O: the first operation connects.
func OpenRedis(ro RedisOptions) (*Redis, error) {
	c, err := newRedisClient(ro)
	if err != nil {
		return nil, err
	}
	if ro.KeyPrefix == "" {
		ro.KeyPrefix = DefaultKeyPrefix
	}
	if ro.OpTimeout <= 0 {
		ro.OpTimeout = DefaultOpTimeout
	}
	return &Redis{c: c, prefix: ro.KeyPrefix, opTimeout: ro.OpTimeout}, nil
}

// Close closes the pool; stores built on it fail with ErrUnavailable afterwards.
func (r *Redis) Close() error {
	if err := r.c.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("closing redis client: %w", err)
	}
	return nil
}

// Store returns a session store on r. o.Keys is required. Closing the store leaves r open.
func (r *Redis) Store(o Options) (*RedisStore, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Keys == nil {
		return nil, errors.New("redis session store needs keys")
	}
	return &RedisStore{core{b: &redisBackend{Redis: r}, o: o, name: "redis"}}, nil
}

// NewRedisStore returns a store over a new pool of its own (OpenRedis), which its Close closes.
func NewRedisStore(ro RedisOptions, o Options) (*RedisStore, error) {
	r, err := OpenRedis(ro)
	if err != nil {
		return nil, err
	}
	s, err := r.Store(o)
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	s.b.(*redisBackend).owned = true
	return s, nil
}

func newRedisClient(ro RedisOptions) (redis.UniversalClient, error) {
	modes := 0
	for _, set := range []bool{ro.URL != "", len(ro.SentinelAddrs) > 0, len(ro.ClusterAddrs) > 0} {
		if set {
			modes++
		}
	}
	switch {
	case modes != 1:
		return nil, errors.New("redis: set exactly one of url, sentinel addresses or cluster addresses")
	case len(ro.SentinelAddrs) > 0 && ro.MasterName == "":
		return nil, errors.New("redis: sentinel needs a master name")
	case ro.MasterName != "" && len(ro.SentinelAddrs) == 0:
		return nil, errors.New("redis: master name needs sentinel addresses")
	case len(ro.ClusterAddrs) > 0 && ro.DB != 0:
		return nil, errors.New("redis: cluster has no databases other than 0")
	}
	maint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if ro.URL != "" {
		opt, err := parseRedisURL(ro.URL)
		if err != nil {
			return nil, err
		}
		if ro.Username != "" {
			opt.Username = ro.Username
		}
		if ro.Password != "" {
			opt.Password = ro.Password
		}
		if ro.DB != 0 {
			opt.DB = ro.DB
		}
		if ro.TLS != nil {
			opt.TLSConfig = ro.TLS
		}
		if ro.DialTimeout != 0 {
			opt.DialTimeout = ro.DialTimeout
		}
		if ro.ReadTimeout != 0 {
			opt.ReadTimeout = ro.ReadTimeout
		}
		if ro.WriteTimeout != 0 {
			opt.WriteTimeout = ro.WriteTimeout
		}
		opt.ContextTimeoutEnabled = true
		opt.DisableIdentity = ro.DisableIdentity
		opt.MaintNotificationsConfig = maint
		return redis.NewClient(opt), nil
	}
	uo := &redis.UniversalOptions{
		Addrs:      ro.ClusterAddrs,
		MasterName: ro.MasterName,
		Username:   ro.Username, Password: ro.Password, DB: ro.DB, TLSConfig: ro.TLS,
		DialTimeout: ro.DialTimeout, ReadTimeout: ro.ReadTimeout, WriteTimeout: ro.WriteTimeout,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          ro.DisableIdentity,
		MaintNotificationsConfig: maint, // ignored by the Sentinel client, which has none
	}
	if len(ro.SentinelAddrs) > 0 {
		uo.Addrs = ro.SentinelAddrs
	} else {
		uo.IsClusterMode = true
	}
	return redis.NewUniversalClient(uo), nil
}

// parseRedisURL is redis.ParseURL limited to redis:// and rediss://, with errors that never
// quote the URL (it may hold a password).
func parseRedisURL(s string) (*redis.Options, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("redis url is malformed")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("redis url scheme %q is not redis or rediss", u.Scheme)
	}
	opt, err := redis.ParseURL(s)
	if err != nil {
		return nil, fmt.Errorf("redis url %s: %w", u.Redacted(), err)
	}
	return opt, nil
}

type redisBackend struct {
	*Redis
	owned bool // close the pool with the store
}

func (r *redisBackend) key(storeKey string) string { return r.prefix + "{" + storeKey + "}:s" }

func unavailable(op string, err error) error {
	return fmt.Errorf("%w: redis %s: %w", ErrUnavailable, op, err)
}

func (r *redisBackend) get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	b, err := r.c.Get(ctx, r.key(key)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, ErrNotFound
	case err != nil:
		return nil, unavailable("get", err)
	}
	return b, nil
}

func (r *redisBackend) create(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	err := r.c.SetArgs(ctx, r.key(key), val, redis.SetArgs{Mode: "NX", TTL: ttl}).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return ErrConflict
	case err != nil:
		return unavailable("set", err)
	}
	return nil
}

func (r *redisBackend) cas(ctx context.Context, key string, expect uint64, val []byte, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	ms := strconv.FormatInt(ttl.Milliseconds(), 10)
	res, err := casScript.Run(ctx, r.c, []string{r.key(key)}, strconv.FormatUint(expect, 10), val, ms).Int()
	if err != nil {
		return unavailable("cas", err)
	}
	switch res {
	case 1:
		return nil
	case 0:
		return ErrConflict
	case -1:
		return ErrNotFound
	default:
		return fmt.Errorf("%w: stored record cannot be read", ErrUnreadable)
	}
}

func (r *redisBackend) del(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	if err := r.c.Del(ctx, r.key(key)).Err(); err != nil {
		return unavailable("del", err)
	}
	return nil
}

func (r *redisBackend) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	if err := r.c.Ping(ctx).Err(); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

func (r *redisBackend) close() error {
	if !r.owned {
		return nil
	}
	return r.Redis.Close()
}

// Locks (see lock.go): <prefix>{<store key>}:lock holds the owner token, in the record's slot.

var (
	//go:embed renew.lua
	renewSrc    string
	renewScript = redis.NewScript(renewSrc)
	//go:embed unlock.lua
	unlockSrc    string
	unlockScript = redis.NewScript(unlockSrc)
)

func (r *redisBackend) lockKey(storeKey string) string { return r.prefix + "{" + storeKey + "}:lock" }

func (r *redisBackend) lock(ctx context.Context, key, token string, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	err := r.c.SetArgs(ctx, r.lockKey(key), token, redis.SetArgs{Mode: "NX", TTL: max(ttl, time.Millisecond)}).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return ErrLocked
	case err != nil:
		return unavailable("lock", err)
	}
	return nil
}

func (r *redisBackend) renew(ctx context.Context, key, token string, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	ms := strconv.FormatInt(max(ttl.Milliseconds(), 1), 10)
	return r.ownerScript(ctx, renewScript, "renew lock", key, token, ms)
}

func (r *redisBackend) unlock(ctx context.Context, key, token string) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	return r.ownerScript(ctx, unlockScript, "unlock", key, token)
}

// ownerScript runs a compare-owner script on the lock key: 1 means done, 0 not the owner.
func (r *redisBackend) ownerScript(ctx context.Context, s *redis.Script, op, key string, args ...any) error {
	res, err := s.Run(ctx, r.c, []string{r.lockKey(key)}, args...).Int()
	switch {
	case err != nil:
		return unavailable(op, err)
	case res != 1:
		return ErrLockLost
	}
	return nil
}
