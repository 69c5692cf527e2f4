//! Watch streams on a client core.
//!
//! The [`WatchRouter`] owns this core's end of the watch channels: it numbers
//! streams, forwards their commands to the store core, hands each pushed notice
//! to its stream's queue, and returns the window credit of written notices (and
//! closes of ended streams) to the store core. [`serve`] runs one etcd Watch
//! stream: a receive half turning requests into commands and a send half writing
//! notices to the HTTP/2 stream, which waits for the client's flow control.

mod response;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use glommio::sync::Semaphore;
use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb;

use crate::auth::CallAuth;
use crate::grpc::{self, Code, RequestStream, ResponseSink, Status};
use crate::watch::{Notice, NoticeBody, StreamId, WatchCommand, WatchPush};

/// Create, cancel and progress requests of one stream the store core has not
/// answered yet. Like etcd's bounded control channel (16), this stops reading
/// requests from a client that sends faster than it reads answers, so control
/// notices cannot pile up either.
pub const COMMANDS_IN_FLIGHT_PER_STREAM: u64 = 16;
/// Written credit is returned once this much accumulated (or the queue is empty),
/// so a busy stream does not send one command per response.
const CREDIT_RETURN_BYTES: usize = 64 * 1024;

type Queued = (pb::ResponseHeader, Notice);

#[derive(Default)]
struct Returns {
    credit: BTreeMap<StreamId, usize>,
    closed: Vec<StreamId>,
}

pub struct WatchRouter {
    commands: ConnectedSender<WatchCommand>,
    streams: RefCell<HashMap<StreamId, LocalSender<Queued>>>,
    next_stream: Cell<StreamId>,
    returns: RefCell<Returns>,
    /// Wakes the task that sends `returns` (capacity 1: a pending wake is enough).
    wake_returns: LocalSender<()>,
    max_request_bytes: usize,
}

impl WatchRouter {
    /// Starts the router's tasks on this core.
    pub fn start(
        commands: ConnectedSender<WatchCommand>,
        pushes: ConnectedReceiver<WatchPush>,
        max_request_bytes: usize,
    ) -> Rc<WatchRouter> {
        let (wake_returns, woken) = local_channel::new_bounded(1);
        let router = Rc::new(WatchRouter {
            commands,
            streams: RefCell::new(HashMap::new()),
            next_stream: Cell::new(1),
            returns: RefCell::new(Returns::default()),
            wake_returns,
            max_request_bytes,
        });
        glommio::spawn_local(Rc::clone(&router).route_pushes(pushes)).detach();
        glommio::spawn_local(Rc::clone(&router).send_returns(woken)).detach();
        router
    }

    async fn route_pushes(self: Rc<Self>, pushes: ConnectedReceiver<WatchPush>) {
        while let Some(push) = pushes.recv().await {
            let streams = self.streams.borrow();
            for notice in push.notices {
                // A stream that ended meanwhile: its close is on the way.
                if let Some(queue) = streams.get(&notice.stream) {
                    let _ = queue.try_send((push.header.clone(), notice));
                }
            }
        }
    }

    async fn send_returns(self: Rc<Self>, woken: LocalReceiver<()>) {
        while woken.recv().await.is_some() {
            let returns = std::mem::take(&mut *self.returns.borrow_mut());
            for (stream, credit_bytes) in returns.credit {
                let _ = self
                    .commands
                    .send(WatchCommand::Consumed { stream, credit_bytes })
                    .await;
            }
            for stream in returns.closed {
                let _ = self.commands.send(WatchCommand::Close { stream }).await;
            }
        }
    }

    fn open(self: &Rc<Self>) -> (OpenStream, LocalReceiver<Queued>) {
        let id = self.next_stream.get();
        self.next_stream.set(id + 1);
        // Unbounded in type only: the store core sends a stream at most its window.
        let (queue, notices) = local_channel::new_unbounded();
        self.streams.borrow_mut().insert(id, queue);
        let open = OpenStream {
            router: Rc::clone(self),
            id,
        };
        (open, notices)
    }

    fn written(&self, stream: StreamId, credit_bytes: usize) {
        let queue_empty = match self.streams.borrow().get(&stream) {
            Some(queue) => queue.len() == 0,
            None => true,
        };
        let mut returns = self.returns.borrow_mut();
        let owed = returns.credit.entry(stream).or_default();
        *owed += credit_bytes;
        if *owed >= CREDIT_RETURN_BYTES || queue_empty {
            let _ = self.wake_returns.try_send(());
        }
    }
}

/// A watch of the server's own (the lock and election services wait on keys
/// with it): one watcher on a stream of its own, read as decoded events.
/// Dropping it ends the stream and its watcher.
pub struct KeyWatch {
    open: OpenStream,
    notices: LocalReceiver<Queued>,
}

/// What a [`KeyWatch`] sees next.
pub enum KeyWatchUpdate {
    /// The events of whole revisions, with the header etcd's WatchResponse
    /// carries for them.
    Events {
        header: pb::ResponseHeader,
        events: Vec<mvccpb::Event>,
    },
    /// The watch ended: refused at its create (compacted history), canceled,
    /// or the store core is stopping.
    Ended,
}

impl WatchRouter {
    /// Starts watching `request` on a stream of its own, created as `auth`
    /// (with auth on, the user needs read permission on the keys).
    pub async fn watch_keys(
        self: &Rc<Self>,
        request: pb::WatchCreateRequest,
        auth: CallAuth,
    ) -> Result<KeyWatch, Status> {
        let (open, notices) = self.open();
        self.commands
            .send(WatchCommand::Create {
                stream: open.id,
                request,
                auth,
            })
            .await
            .map_err(|_| Status::new(Code::Unavailable, "the server is stopping"))?;
        Ok(KeyWatch { open, notices })
    }
}

impl KeyWatch {
    /// The next events, skipping the created and progress answers.
    pub async fn next(&mut self) -> KeyWatchUpdate {
        while let Some((header, notice)) = self.notices.recv().await {
            self.open.router.written(self.open.id, notice.credit_bytes);
            match notice.body {
                NoticeBody::Created {
                    cancel_reason: None, ..
                }
                | NoticeBody::Progress { .. }
                | NoticeBody::Nothing => {}
                NoticeBody::Created { .. } | NoticeBody::Canceled { .. } | NoticeBody::Compacted { .. } => break,
                NoticeBody::Events { revision, events, .. } => {
                    let header = pb::ResponseHeader { revision, ..header };
                    let events = events
                        .into_iter()
                        .map(|event| mvccpb::Event::decode(event).expect("the store core encodes events"))
                        .collect();
                    return KeyWatchUpdate::Events { header, events };
                }
            }
        }
        KeyWatchUpdate::Ended
    }
}

/// A registered stream; dropping it (the call ended or was reset) tells the store
/// core to drop the stream's watchers.
struct OpenStream {
    router: Rc<WatchRouter>,
    id: StreamId,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.router.streams.borrow_mut().remove(&self.id);
        let mut returns = self.router.returns.borrow_mut();
        returns.credit.remove(&self.id);
        returns.closed.push(self.id);
        let _ = self.router.wake_returns.try_send(());
    }
}

/// Serves one Watch call until the client goes away. As in etcd, a client that
/// half-closes its side still receives events.
pub async fn serve(
    router: Rc<WatchRouter>,
    mut requests: RequestStream,
    mut responses: ResponseSink,
    auth: CallAuth,
) -> Result<(), Status> {
    let (open, notices) = router.open();
    let stream = open.id;
    let unanswered = Semaphore::new(COMMANDS_IN_FLIGHT_PER_STREAM);
    let receive = async {
        while let Some(message) = requests.next().await {
            let request: pb::WatchRequest = grpc::decode(message?)?;
            let Some(command) = command(stream, request, &auth) else {
                continue; // etcd ignores a request with no known kind
            };
            unanswered
                .acquire(1)
                .await
                .map_err(|_| Status::new(Code::Unavailable, "the server is stopping"))?;
            router
                .commands
                .send(command)
                .await
                .map_err(|_| Status::new(Code::Unavailable, "the server is stopping"))?;
        }
        future::pending().await
    };
    let send = async {
        while let Some((header, notice)) = notices.recv().await {
            if notice.answers_command {
                unanswered.signal(1);
            }
            let credit_bytes = notice.credit_bytes;
            for response in response::responses(&header, notice, router.max_request_bytes) {
                responses.send(response).await?;
            }
            router.written(stream, credit_bytes);
        }
        Err(Status::new(Code::Unavailable, "the server is stopping"))
    };
    let outcome = future::or(receive, send).await;
    drop(open);
    outcome
}

/// What a Watch request asks of the store core; None for a request of no
/// kind ringkv knows.
pub(crate) fn command(stream: StreamId, request: pb::WatchRequest, auth: &CallAuth) -> Option<WatchCommand> {
    use pb::watch_request::RequestUnion;
    Some(match request.request_union? {
        RequestUnion::CreateRequest(request) => WatchCommand::Create {
            stream,
            request,
            auth: auth.clone(),
        },
        RequestUnion::CancelRequest(cancel) => WatchCommand::Cancel {
            stream,
            watch_id: cancel.watch_id,
        },
        RequestUnion::ProgressRequest(_) => WatchCommand::Progress { stream },
    })
}
