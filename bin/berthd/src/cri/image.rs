//! ImageService: pulling, listing, inspecting and removing images, through
//! the ImageActor.

use super::Cri;
use crate::convert;
use crate::door::{feed, serve, Feed};
use berth_actors::image::messages as msg;
use berth_protocol::cri::image_service_server::ImageService;
use berth_protocol::cri::*;
use tonic::{Request, Response, Status};

impl Cri {
    async fn list(&self, filter: Option<ImageFilter>) -> Result<Vec<Image>, berth_actors::Error> {
        let image = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let infos = self.node.image.call(msg::ListImages { image }).await?;
        Ok(infos.iter().map(convert::image).collect())
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    type StreamImagesStream = Feed<StreamImagesResponse>;

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = request.into_inner();
        serve("PullImage", async {
            let image = convert::image_name(req.image.as_ref())?;
            let auth = convert::credentials(req.auth)?;
            tracing::info!(image = %berth_actors::checked::shown(&image), "pulling");
            let id = self.node.image.call(msg::PullImage { image, auth }).await?;
            Ok(PullImageResponse { image_ref: id })
        })
        .await
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        serve("ImageStatus", async {
            let image = convert::image_name(req.image.as_ref())?;
            let verbose = req.verbose;
            let info = self
                .node
                .image
                .call(msg::ImageStatus { image, verbose })
                .await?;
            Ok(ImageStatusResponse {
                image: info.as_ref().map(convert::image),
                info: info.as_ref().map(convert::image_info).unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request.into_inner().filter;
        serve("ListImages", async {
            Ok(ListImagesResponse {
                images: self.list(filter).await?,
            })
        })
        .await
    }

    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request.into_inner().filter;
        serve("StreamImages", async {
            let images = self.list(filter).await?;
            Ok(feed(&images, |c| StreamImagesResponse {
                images: c.to_vec(),
            }))
        })
        .await
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let req = request.into_inner();
        serve("RemoveImage", async {
            let image = convert::image_name(req.image.as_ref())?;
            self.node.image.call(msg::RemoveImage { image }).await?;
            Ok(RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        serve("ImageFsInfo", async {
            let usage = self.node.image.call(msg::ImageFsInfo).await?;
            Ok(ImageFsInfoResponse {
                image_filesystems: vec![convert::fs_usage(&usage)],
                container_filesystems: Vec::new(),
            })
        })
        .await
    }
}
