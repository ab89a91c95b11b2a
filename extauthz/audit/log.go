package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

// DefaultCheckpointEvery is how many lines apart the Log writes checkpoints
// into the log itself when Options leaves it zero.
const DefaultCheckpointEvery = 1000

// Options tune a Log.
type Options struct {
	// Fsync makes every batch durable against power loss (one fsync per
	// batch). Without it a line survives a process crash but not a machine
	// crash; after one, the log may fail verification because its sidecar
	// sealed lines that never reached the disk.
	Fsync bool
	// CheckpointEvery is the number of lines between checkpoint lines in the
	// log (DefaultCheckpointEvery when zero). The sidecar is updated as
	// SealEvery says regardless; these lines are what a copy of the log
	// without its sidecar is verified against.
	CheckpointEvery int
	// SealEvery is how long written lines may wait for their sidecar
	// checkpoint: a batch is sealed when the last seal is at least this old,
	// and lines left unsealed are sealed this long after the seal before
	// them at the latest (a timer), at a checkpoint line, a rotation and
	// Close. Zero seals after every batch. What a lag gives up: lines past
	// the sidecar's seal verify as "unsealed" (Open and Verify check them
	// against the chain), so whoever can write the file could cut them off
	// unnoticed until the next seal — no more than whoever could also put an
	// older sidecar back already can (see README, Tamper evidence); a line
	// appended after a cut breaks the chain.
	SealEvery time.Duration
	// MaxBytes rotates the log before a batch would grow it past this size;
	// zero never rotates by size (Rotate still works).
	MaxBytes int64
	// KeyFile is the chain key (32 random bytes) and SigningKeyFile the
	// checkpoint signing key (Ed25519 PKCS#8 PEM); empty means DefaultKeyFiles.
	// Both are created, mode 0600, when the log is new and they do not exist.
	KeyFile, SigningKeyFile string
	// Now is the clock of header and checkpoint times (time.Now when nil).
	Now func() time.Time
	// Logger reports what has no caller to return to: a failed size rotation,
	// after which the log goes on in the current file. Nil discards.
	Logger *slog.Logger

	hooks *testHooks
}

// testHooks let tests put faults under the Log.
type testHooks struct {
	wrap func(name string, f file) file
}

// file is what the Log needs of an open file.
type file interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Close() error
}

// Log is an append-only JSONL file with a keyed chain and signed checkpoints.
// Safe for concurrent use. Concurrent Writes are committed together: a Write
// that finds no commit in progress commits the batch it joined itself (so an
// uncontended Write costs no goroutine switch); the others wait, and when a
// commit ends, one Write of the next batch commits it.
type Log struct {
	path, sidecarPath string
	opts              Options
	now               func() time.Time
	logger            *slog.Logger
	signer            ed25519.PrivateKey
	pub               map[string]ed25519.PublicKey
	chainID           string

	mu         sync.Mutex
	cond       *sync.Cond // broadcast when a commit ends
	cur        *batch     // filling: the next batch to commit
	committing bool       // a commit is in progress; what follows is its committer's
	waiting    int        // Writes waiting for a commit to end
	closed     bool       // no new Writes
	shut       bool       // Close finished
	broken     error      // sticky: a failed batch could not be undone

	// Owned by whoever commits (committing is set), and by Open.
	f, sc      file
	mac        *chainMAC
	st         state
	out        bytes.Buffer
	nextRotate time.Time
	sealedAt   time.Time   // when the sidecar was last written (SealEvery)
	sealTimer  *time.Timer // armed while lines wait for a seal
}

// state is where the chain stands. seal is the latest signed checkpoint, the
// one in the sidecar; after every committed batch it seals every line.
type state struct {
	logID           string
	lines           int
	bytes           int64
	head            string
	sinceCheckpoint int // lines since the last checkpoint line
	seal            Checkpoint
}

// batch is the Writes (and Rotate requests) committed together.
type batch struct {
	lines      [][]byte // encoded lines with placeholder hashes, owned by their writers
	prev, hash []string
	rotate     bool
	seal       bool // seal what is written (sealPending)
	rotated    string
	err        error
	rotateErr  error
	finished   bool // guarded by Log.mu
}

var _ Sink = (*Log)(nil)

var errClosed = errors.New("audit: log closed")

// Open opens or creates the log at path and its sidecar (path.checkpoint),
// loading the chain and signing keys (creating them for a new log).
//
// A new log starts with a header line. An existing one continues where its
// sidecar checkpoint says it ends: Open checks the sealed last line, then every
// line after it (a crash can leave a batch written but not yet sealed), cuts
// off a torn last line, and seals what is there. It refuses a log that does not
// verify there, or that its sidecar says is longer than it is, rather than
// continue a chain that was tampered with: verify it (Verify,
// `aisecops audit verify`) and move it aside to start a new log.
func Open(path string, opts Options) (*Log, error) {
	if opts.CheckpointEvery < 0 || opts.MaxBytes < 0 || opts.SealEvery < 0 {
		return nil, errors.New("audit: CheckpointEvery, MaxBytes and SealEvery must not be negative")
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	l := &Log{path: path, sidecarPath: path + SidecarSuffix, opts: opts, now: opts.Now, logger: opts.Logger, cur: &batch{}}
	l.cond = sync.NewCond(&l.mu)
	if l.now == nil {
		l.now = time.Now
	}
	if l.logger == nil {
		l.logger = slog.New(slog.DiscardHandler)
	}
	if err := l.open(); err != nil {
		if l.f != nil {
			l.f.Close()
		}
		if l.sc != nil {
			l.sc.Close()
		}
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	return l, nil
}

func (l *Log) open() error {
	if err := finishRotation(l.path); err != nil {
		return err
	}
	data, err := readSidecar(l.sidecarPath)
	if err != nil {
		return err
	}
	neverSealed := len(bytes.Trim(data, " \n\x00")) == 0
	size, err := l.size(neverSealed)
	if err != nil {
		return err
	}
	chainFile, signingFile := DefaultKeyFiles(l.path)
	if l.opts.KeyFile != "" {
		chainFile = l.opts.KeyFile
	}
	if l.opts.SigningKeyFile != "" {
		signingFile = l.opts.SigningKeyFile
	}
	// Keys are created only for a new log: an existing one under a new key
	// could never verify again.
	loadChain, loadSigning := LoadChainKey, LoadSigningKey
	if size == 0 && neverSealed {
		loadChain, loadSigning = loadOrCreateChainKey, loadOrCreateSigningKey
	}
	chainKey, err := loadChain(chainFile)
	if err != nil {
		return err
	}
	if l.signer, err = loadSigning(signingFile); err != nil {
		return err
	}
	pub := l.signer.Public().(ed25519.PublicKey)
	l.pub = map[string]ed25519.PublicKey{KeyID(pub): pub}
	l.mac, l.chainID = newChainMAC(chainKey), chainKeyID(chainKey)

	sealed, err := parseSidecar(data, l.pub)
	if err != nil {
		return fmt.Errorf("sidecar %s: %w (if the signing key %s was replaced, restore it)", l.sidecarPath, err, signingFile)
	}
	if l.f, err = l.openFile(l.path, os.O_RDWR|os.O_CREATE); err != nil {
		return err
	}
	if l.sc, err = l.openFile(l.sidecarPath, os.O_RDWR|os.O_CREATE); err != nil {
		return err
	}
	if size == 0 {
		if sealed != nil {
			return fmt.Errorf("the log is empty but its sidecar seals %d lines of log %s: the log was deleted or truncated", sealed.Lines, sealed.LogID)
		}
		if err := l.startLog(l.f, nil); err != nil {
			return err
		}
		return l.reseal()
	}
	return l.recover(sealed, size)
}

// size is the log's size, 0 if it does not exist. A log never sealed whose
// header is torn (no line ends: power was lost while a new log was being
// started, before any Write) is emptied, to start again.
func (l *Log) size(neverSealed bool) (int64, error) {
	st, err := os.Stat(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil || !neverSealed || st.Size() > MaxLineBytes {
		return st.Size(), err
	}
	data, err := os.ReadFile(l.path)
	if err != nil {
		return 0, err
	}
	if bytes.IndexByte(data, '\n') < 0 {
		return 0, os.Truncate(l.path, 0)
	}
	return st.Size(), nil
}

// recover takes up an existing log from its sidecar checkpoint.
func (l *Log) recover(sealed *Checkpoint, size int64) error {
	header, err := firstLine(l.f, size)
	if err != nil {
		return err
	}
	w := &walker{file: l.path, mac: l.mac, chainID: l.chainID, keys: l.pub}
	from := int64(0)
	lastEvent := "" // of the last line
	switch {
	case sealed == nil:
		// Only a lone header may be unsealed: a crash between writing it and
		// sealing it. More lines without a sidecar could hide deleted ones.
	case sealed.LogID == header.LogID:
		if size < sealed.Bytes {
			return fmt.Errorf("the sidecar checkpoint seals %d lines (%d bytes), the file has %d bytes: lines were deleted or the file truncated", sealed.Lines, sealed.Bytes, size)
		}
		last, err := l.checkSealedLine(sealed)
		if err != nil {
			return err
		}
		lastEvent = eventOf(last)
		w.n, w.off, w.head, w.fr.LogID = sealed.Lines, sealed.Bytes, sealed.Head, sealed.LogID
		from = sealed.Bytes
	default:
		w.sidecar = sealed // rotation ended before the new log's first seal: header() checks the link
	}
	br := bufio.NewReaderSize(io.NewSectionReader(l.f, from, size-from), 64<<10)
	var buf, next []byte
	partial, err := w.walk(br, &buf, &next)
	if err != nil {
		return err
	}
	if w.fr.TotalLines > 0 { // the walk read lines
		lastEvent = w.fields.Event
	}
	if sealed == nil && w.n > 1 {
		return fmt.Errorf("%d lines but no valid checkpoint sidecar %s: lines could have been deleted unnoticed", w.n, l.sidecarPath)
	}
	if partial > 0 {
		// A torn last line: a crash mid-write, never acknowledged. Cut it off.
		if err := l.f.Truncate(w.off); err != nil {
			return fmt.Errorf("repair a torn last line: %w", err)
		}
	}
	l.st = state{logID: w.fr.LogID, lines: w.n, bytes: w.off, head: w.head}
	if lastEvent != EventCheckpoint {
		// The cadence restarts here; Close adds a checkpoint line unless the
		// log already ends with one.
		l.st.sinceCheckpoint = 1
	}
	if sealed != nil {
		l.st.seal = *sealed
		if sealed.LogID == l.st.logID && sealed.Lines == l.st.lines {
			return nil
		}
	}
	return l.reseal()
}

// checkSealedLine checks that the line the sidecar seals is in the file, with
// the hash the sidecar names, and returns it.
func (l *Log) checkSealedLine(c *Checkpoint) ([]byte, error) {
	line, err := lineEndingAt(l.f, c.Bytes)
	if err == nil {
		prefix, sum, ok := splitLine(line)
		var got [hashHexLen]byte
		if ok {
			l.mac.line(prefix, got[:])
		}
		if !ok || string(sum) != c.Head || !bytes.Equal(got[:], sum) {
			err = errors.New("it does not end there with the hash the checkpoint names")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("the sidecar checkpoint seals line %d at byte %d, but %w: the log was rewritten", c.Lines, c.Bytes, err)
	}
	return line, nil
}

func eventOf(line []byte) string {
	var f lineFields
	if !readRecordHead(line, &f) {
		_ = json.Unmarshal(line, &f)
	}
	return f.Event
}

// startLog writes a header line into the empty file f and makes it durable,
// and makes it the current state. The header names a new log id and, after a
// rotation, the log it continues.
func (l *Log) startLog(f file, link *Link) error {
	var id [16]byte
	rand.Read(id[:])
	logID := hex.EncodeToString(id[:])
	var buf bytes.Buffer
	if err := encodeLine(&buf, &controlLine{TS: l.now().UTC(), Event: EventLogOpened, LogID: logID, ChainKeyID: l.chainID, Link: link, PrevHash: zeroHash, Hash: zeroHash}); err != nil {
		return err
	}
	sum := l.mac.seal(buf.Bytes(), l.mac.genesis(logID, link))
	if _, err := f.WriteAt(buf.Bytes(), 0); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	l.st = state{logID: logID, lines: 1, bytes: int64(buf.Len()), head: string(sum), sinceCheckpoint: 1, seal: l.st.seal}
	return nil
}

// reseal signs the current state into the sidecar.
func (l *Log) reseal() error {
	c := l.checkpoint(&l.st)
	if err := l.writeSidecar(&c); err != nil {
		return err
	}
	l.st.seal, l.sealedAt = c, time.Now()
	return nil
}

// sealed reports whether st's seal covers every line of st.
func (st *state) sealed() bool { return st.seal.LogID == st.logID && st.seal.Lines == st.lines }

// sealLater arms the timer that seals what the last batch left unsealed,
// SealEvery after the last seal. Called by the committer.
func (l *Log) sealLater() {
	if l.sealTimer == nil {
		l.sealTimer = time.AfterFunc(max(l.opts.SealEvery-time.Since(l.sealedAt), 0), l.sealPending)
	}
}

// sealPending seals the lines batches left unsealed, as a commit of its own
// (or of the batch filling meanwhile).
func (l *Log) sealPending() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return // Close seals
	}
	b := l.cur
	b.seal = true
	l.await(b)
}

// sealNow seals every written line (the timer's part of a commit).
func (l *Log) sealNow() {
	l.sealTimer = nil
	if l.brokenErr() != nil || l.st.sealed() {
		return
	}
	if err := l.reseal(); err != nil {
		// The lines are written; the next batch's seal, or the next
		// checkpoint line, tries again, and fails its Writes if it fails.
		l.logger.Error("sealing the audit log failed", "path", l.path, "err", err)
		l.sealLater()
	}
}

// checkpoint signs st; its seq follows the last checkpoint signed.
func (l *Log) checkpoint(st *state) Checkpoint {
	c := Checkpoint{Seq: l.st.seal.Seq + 1, LogID: st.logID, Lines: st.lines, Bytes: st.bytes, Head: st.head, TS: l.now().UTC()}
	c.sign(l.signer)
	return c
}

func (l *Log) writeSidecar(c *Checkpoint) error {
	slot, err := encodeSlot(c)
	if err != nil {
		return err
	}
	if _, err := l.sc.WriteAt(slot, int64(c.Seq%2)*slotSize); err != nil {
		return fmt.Errorf("write sidecar: %w", err)
	}
	return nil
}

// Write appends r, setting r.PrevHash and r.Hash. It returns when r's line
// has been written (and synced, with Fsync) together with whatever other
// Writes arrived meanwhile, and sealed in the sidecar (or, with SealEvery,
// due to be within SealEvery). On error nothing of
// the batch remains in the log; the caller must deny.
func (l *Log) Write(r *Record) error {
	if isControl(r.Event) {
		return fmt.Errorf("audit: event %q is written by the log itself", r.Event)
	}
	buf := linePool.Get().(*bytes.Buffer)
	defer putLineBuffer(buf)
	buf.Reset()
	c := *r
	c.PrevHash, c.Hash = zeroHash, zeroHash
	input := c.Input
	splice := compactObject(input)
	if splice {
		c.Input = nil
	}
	if err := encodeLine(buf, &c); err != nil {
		return err
	}
	if splice {
		if err := spliceInput(buf, input, &c); err != nil {
			return err
		}
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errClosed
	}
	if l.broken != nil {
		l.mu.Unlock()
		return l.broken
	}
	b, i := l.cur, len(l.cur.lines)
	b.lines = append(b.lines, buf.Bytes())
	l.await(b)
	l.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	r.PrevHash, r.Hash = b.prev[i], b.hash[i]
	return nil
}

// await returns when b has been committed, committing it (and nothing
// else) if no commit is in progress. Called and returns with l.mu held.
func (l *Log) await(b *batch) {
	for !b.finished {
		if l.committing {
			l.waiting++
			l.cond.Wait()
			l.waiting--
			continue
		}
		// No commit in progress and b not finished: b is the filling batch.
		l.commit()
	}
}

// commit commits the filling batch. Called and returns with l.mu held,
// which it releases while writing.
func (l *Log) commit() {
	l.committing = true
	if l.waiting > 0 {
		// Others are writing too: let those about to join do so first.
		l.mu.Unlock()
		runtime.Gosched()
		l.mu.Lock()
	}
	b := l.cur
	l.cur = &batch{}
	l.mu.Unlock()
	if len(b.lines) > 0 {
		b.err = l.append(b, false)
	}
	if b.seal {
		l.sealNow()
	}
	if b.rotate {
		b.rotated, b.rotateErr = l.rotate()
	}
	l.mu.Lock()
	b.finished, l.committing = true, false
	l.cond.Broadcast()
}

var linePool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putLineBuffer(b *bytes.Buffer) {
	if b.Cap() <= 64<<10 {
		linePool.Put(b)
	}
}

// Rotate closes the current file with a final checkpoint, renames it to
// PATH.<UTC time> and starts a new file at the log's path whose header links
// to the old file's last line, so the files verify as one chain
// (VerifyFiles). It returns the old file's new name.
func (l *Log) Rotate() (string, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return "", errClosed
	}
	b := l.cur
	b.rotate = true
	l.await(b)
	l.mu.Unlock()
	return b.rotated, b.rotateErr
}

// Close commits what is pending, writes a final checkpoint line, makes the
// log and its sidecar durable and closes them. Writes after Close fail.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		for !l.shut {
			l.cond.Wait()
		}
		return nil
	}
	l.closed = true
	for l.committing || len(l.cur.lines) > 0 || l.cur.rotate {
		if l.committing {
			l.cond.Wait()
		} else {
			l.commit()
		}
	}
	l.committing = true // for good: the files are closing
	l.mu.Unlock()
	err := l.finish()
	l.mu.Lock()
	l.shut = true
	l.cond.Broadcast()
	return err
}

// append commits a batch: one write of its lines (after a checkpoint line when
// one is due, or forced), one fsync with Fsync, one sidecar checkpoint. On
// failure it undoes the write and the state stays as it was.
func (l *Log) append(b *batch, forceCheckpoint bool) error {
	if err := l.brokenErr(); err != nil {
		return err
	}
	if b != nil {
		l.maybeRotate(b)
		if err := l.brokenErr(); err != nil {
			return err
		}
	}
	if (forceCheckpoint || l.st.sinceCheckpoint >= l.opts.CheckpointEvery) && !l.st.sealed() {
		// Lines wait for their seal (SealEvery): seal them first, for the
		// checkpoint line to copy.
		if err := l.reseal(); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
	}
	st := l.st
	l.out.Reset()
	if (forceCheckpoint || st.sinceCheckpoint >= l.opts.CheckpointEvery) && st.sealed() {
		// The checkpoint line copies the sidecar's checkpoint, which seals
		// exactly the lines before it. Make that durable first, so that the
		// sidecar is never older than a checkpoint in the log.
		if l.opts.Fsync {
			if err := l.sc.Sync(); err != nil {
				return fmt.Errorf("audit: sync sidecar: %w", err)
			}
		}
		if err := l.appendLine(&st, &controlLine{TS: l.now().UTC(), Event: EventCheckpoint, Checkpoint: &st.seal, PrevHash: zeroHash, Hash: zeroHash}); err != nil {
			return err
		}
		st.sinceCheckpoint = 0
	}
	if b != nil {
		b.prev, b.hash = make([]string, len(b.lines)), make([]string, len(b.lines))
		for i, line := range b.lines {
			start := l.out.Len()
			l.out.Write(line)
			b.prev[i] = st.head
			st.head = string(l.mac.seal(l.out.Bytes()[start:], st.head))
			b.hash[i] = st.head
			st.lines++
			st.bytes += int64(len(line))
			st.sinceCheckpoint++
		}
	}
	if l.out.Len() == 0 {
		return nil
	}
	before := l.st.bytes
	if _, err := l.f.WriteAt(l.out.Bytes(), before); err != nil {
		return l.undo(before, -1, fmt.Errorf("audit: write: %w", err))
	}
	if l.opts.Fsync {
		if err := l.f.Sync(); err != nil {
			return l.undo(before, -1, fmt.Errorf("audit: fsync: %w", err))
		}
	}
	if !forceCheckpoint && l.opts.SealEvery > 0 && time.Since(l.sealedAt) < l.opts.SealEvery {
		l.st = st
		l.sealLater()
		return nil
	}
	c := l.checkpoint(&st)
	if err := l.writeSidecar(&c); err != nil {
		return l.undo(before, int(c.Seq%2), fmt.Errorf("audit: %w", err))
	}
	st.seal = c
	l.st, l.sealedAt = st, time.Now()
	return nil
}

// appendLine encodes a control line onto the batch being built.
func (l *Log) appendLine(st *state, v *controlLine) error {
	start := l.out.Len()
	if err := encodeLine(&l.out, v); err != nil {
		return err
	}
	line := l.out.Bytes()[start:]
	st.head = string(l.mac.seal(line, st.head))
	st.lines++
	st.bytes += int64(len(line))
	return nil
}

// undo takes a failed batch back out of the file (and the sidecar slot it may
// have written), so that no Write that failed leaves a line. If that fails
// too the log is broken: every later Write fails until it is reopened.
func (l *Log) undo(size int64, slot int, cause error) error {
	err := l.f.Truncate(size)
	if err == nil && l.opts.Fsync {
		err = l.f.Sync()
	}
	if err == nil && slot >= 0 {
		_, err = l.sc.WriteAt(blankSlot, int64(slot)*slotSize)
	}
	if err != nil {
		l.mu.Lock()
		l.broken = fmt.Errorf("audit: log unusable after a failed write (%v) could not be undone: %w", cause, err)
		l.mu.Unlock()
	}
	return cause
}

func (l *Log) brokenErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

// maybeRotate rotates by size before a batch that would grow the file past
// MaxBytes. A failed rotation is logged and retried a minute later; the batch
// goes into the current file.
func (l *Log) maybeRotate(b *batch) {
	if l.opts.MaxBytes == 0 || l.st.lines <= 1 {
		return
	}
	n := int64(0)
	for _, line := range b.lines {
		n += int64(len(line))
	}
	if l.st.bytes+n <= l.opts.MaxBytes || l.now().Before(l.nextRotate) {
		return
	}
	if _, err := l.rotate(); err != nil {
		l.nextRotate = l.now().Add(time.Minute)
		l.logger.Error("audit log rotation failed; writing on in the current file", "path", l.path, "err", err)
	}
}

// rotate: a final checkpoint line in the old file; the new file, header
// included, written and synced at PATH.next; the old file renamed aside and
// the new one into place (Open completes a rotation a crash interrupted
// between the two renames); then the sidecar seals the new log. Until it does,
// it still seals the old log's last line, which the new header links to.
func (l *Log) rotate() (string, error) {
	if l.st.sinceCheckpoint > 0 || !l.st.sealed() {
		if err := l.append(nil, true); err != nil {
			return "", err
		}
	}
	if err := errors.Join(l.f.Sync(), l.sc.Sync()); err != nil {
		return "", fmt.Errorf("audit: rotate: %w", err)
	}
	next := l.path + ".next"
	_ = os.Remove(next) // a leftover of an interrupted rotation
	nf, err := l.openFile(next, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return "", fmt.Errorf("audit: rotate: %w", err)
	}
	old := l.st
	link := &Link{LogID: old.logID, Lines: old.lines, Head: old.head}
	if err := l.startLog(nf, link); err != nil {
		l.st = old
		nf.Close()
		os.Remove(next)
		return "", fmt.Errorf("audit: rotate: %w", err)
	}
	rotated := rotatedName(l.path, l.now())
	if err := os.Rename(l.path, rotated); err != nil {
		l.st = old
		nf.Close()
		os.Remove(next)
		return "", fmt.Errorf("audit: rotate: %w", err)
	}
	if err := os.Rename(next, l.path); err != nil {
		l.st = old
		nf.Close()
		if rerr := os.Rename(rotated, l.path); rerr != nil {
			l.mu.Lock()
			l.broken = fmt.Errorf("audit: rotation left no log at %s (the old file is %s, the new one %s): %w", l.path, rotated, next, errors.Join(err, rerr))
			l.mu.Unlock()
			return "", l.broken
		}
		os.Remove(next)
		return "", fmt.Errorf("audit: rotate: %w", err)
	}
	if l.opts.Fsync {
		_ = syncDir(filepath.Dir(l.path))
	}
	l.f.Close()
	l.f = nf
	if err := l.reseal(); err != nil {
		return rotated, fmt.Errorf("audit: rotated to %s, but sealing the new log failed (the next write retries): %w", rotated, err)
	}
	return rotated, nil
}

// finish closes the log: a final checkpoint line, everything synced.
func (l *Log) finish() error {
	var errs []error
	if l.sealTimer != nil {
		l.sealTimer.Stop()
	}
	if l.brokenErr() == nil && (l.st.sinceCheckpoint > 0 || !l.st.sealed()) {
		errs = append(errs, l.append(nil, true))
	}
	errs = append(errs, l.f.Sync(), l.sc.Sync(), l.f.Close(), l.sc.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("audit: close %s: %w", l.path, err)
	}
	return nil
}

func (l *Log) openFile(name string, flag int) (file, error) {
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, err
	}
	if l.opts.hooks != nil && l.opts.hooks.wrap != nil {
		return l.opts.hooks.wrap(name, f), nil
	}
	return f, nil
}

// finishRotation completes or abandons a rotation a crash interrupted: a
// PATH.next with no PATH is the new log, renamed into place after the old one
// was moved aside; a PATH.next beside PATH never took over.
func finishRotation(path string) error {
	next := path + ".next"
	if _, err := os.Stat(next); err != nil {
		return nil
	}
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return os.Remove(next)
	case errors.Is(err, os.ErrNotExist):
		return os.Rename(next, path)
	}
	return err
}

// rotatedName is PATH.<UTC time>, so that a shell glob lists rotated files in
// order; it never names an existing file.
func rotatedName(path string, now time.Time) string {
	base := path + "." + now.UTC().Format("20060102T150405.000000000Z")
	name := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			return name
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// firstLine reads and parses the header line.
func firstLine(f io.ReaderAt, size int64) (*lineFields, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 64<<10)
	var buf []byte
	line, complete, err := readLine(br, &buf)
	if err != nil {
		return nil, err
	}
	var h lineFields
	if !complete || json.Unmarshal(line, &h) != nil || h.Event != EventLogOpened || h.LogID == "" {
		return nil, errors.New("the first line is not a log header: not a keyed audit log (written by an older version?); move it aside to start a new log")
	}
	return &h, nil
}

// lineEndingAt returns the line that ends just before byte end (which must
// follow a newline), without its newline.
func lineEndingAt(f io.ReaderAt, end int64) ([]byte, error) {
	const chunk = 64 << 10
	var buf []byte
	pos := end
	for pos > 0 {
		n := min(chunk, pos)
		b := make([]byte, n)
		if _, err := f.ReadAt(b, pos-n); err != nil {
			return nil, err
		}
		buf = append(b, buf...)
		pos -= n
		if buf[len(buf)-1] != '\n' {
			return nil, errors.New("no line ends there")
		}
		if i := bytes.LastIndexByte(buf[:len(buf)-1], '\n'); i >= 0 {
			return buf[i+1 : len(buf)-1], nil
		}
		if len(buf) > MaxLineBytes+1 {
			return nil, errors.New("no line ends there")
		}
	}
	if len(buf) == 0 {
		return nil, errors.New("no line ends there")
	}
	return buf[:len(buf)-1], nil
}
