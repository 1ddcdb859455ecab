//! ImageService: pulling, listing, inspecting and removing images.

use super::Cri;
use crate::door::{unimplemented_rpcs, Feed};
use berth_protocol::cri::image_service_server::ImageService;
use berth_protocol::cri::*;

#[tonic::async_trait]
impl ImageService for Cri {
    type StreamImagesStream = Feed<StreamImagesResponse>;

    unimplemented_rpcs! {
        list_images(ListImagesRequest) -> ListImagesResponse = "ListImages";
        stream_images(StreamImagesRequest) -> Self::StreamImagesStream = "StreamImages";
        image_status(ImageStatusRequest) -> ImageStatusResponse = "ImageStatus";
        pull_image(PullImageRequest) -> PullImageResponse = "PullImage";
        remove_image(RemoveImageRequest) -> RemoveImageResponse = "RemoveImage";
        image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse = "ImageFsInfo";
    }
}
